// ParallelFor on XLA's intra-op thread pool, shared by the project's FFI kernels.

#ifndef DIGITS_JAX_PARALLEL_H_
#define DIGITS_JAX_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace digits_jax {

// Runs body(i) for every i in [0, n) on the calling thread and the intra-op pool. The
// calling thread claims items too, and waits only for items another thread has started,
// so it cannot deadlock when the pool's threads are all busy (or blocked in another call).
template <typename F>
inline void ParallelFor(xla::ffi::ThreadPool& pool, int64_t n, F body) {
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  if (n <= 1 || threads <= 1) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();  // outlives this call if a helper starts late
  auto work = [state, n, body]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < n;) {
      body(i);
      if (state->done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  for (int64_t t = 0; t < std::min(threads, n - 1); ++t) pool.Schedule([work]() { work(); });
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == n; });
}

}  // namespace digits_jax

#endif  // DIGITS_JAX_PARALLEL_H_
