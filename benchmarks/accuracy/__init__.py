"""Accuracy studies: one-lever ablations of the so3 recipe (``ablation``), rotation protocols on the test
or validation split (``protocols``), the DGCNN and PointNet peers (``peers``), fine-tuning against
training from scratch (``finetune``), the implicit-vs-basis group comparison (``groups_report``) and
accuracy by distance to the nearest training shape (``neardup``)."""
