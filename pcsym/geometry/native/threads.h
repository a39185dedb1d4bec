/* Shared by knn.c and edge.c: run `fn` on `n` jobs (job t at base + t * size), job 0 on the calling thread,
 * the others on POSIX threads; a job whose thread could not be started runs here, after the others. */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* the thread count to use: at least 1, at most 64 (the jobs arrays) and at most `work` units */
static int clamp_threads(int threads, int64_t work) {
  if (threads > 64) threads = 64;
  if (threads > work) threads = (int)work;
  return threads < 1 ? 1 : threads;
}

static void run_jobs(void *(*fn)(void *), void *base, size_t size, int n) {
  pthread_t tid[64];
  int started[64] = {0};
  for (int t = 1; t < n; t++) started[t] = pthread_create(&tid[t], NULL, fn, (char *)base + t * size) == 0;
  fn(base);
  for (int t = 1; t < n; t++) {
    if (started[t])
      pthread_join(tid[t], NULL);
    else
      fn((char *)base + t * size);
  }
}
