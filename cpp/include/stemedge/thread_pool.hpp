// A small persistent thread pool: kernels split frame stacks over it without paying thread start-up
// on every call (live loops call kernels on small stacks thousands of times a second).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace stemedge {

class ThreadPool {
  public:
    explicit ThreadPool(std::size_t n_threads);  // total threads including the caller
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    // Runs fn(task) for task in [0, n_tasks) on at most max_threads threads (the caller is one of
    // them) and returns when all are done; the first exception thrown by a task is rethrown.
    // Concurrent callers are served one after the other.
    void run(std::size_t n_tasks, std::size_t max_threads, const std::function<void(std::size_t)>& fn);

    std::size_t size() const { return workers_.size() + 1; }

    // The process-wide pool, sized to the CPUs this process may run on.
    static ThreadPool& global();

  private:
    void worker_loop(std::size_t id);
    void drain();

    std::vector<std::thread> workers_;
    std::mutex run_mutex_;  // serialises run() calls
    std::mutex m_;
    std::condition_variable start_cv_, done_cv_;
    const std::function<void(std::size_t)>* fn_ = nullptr;
    std::size_t n_tasks_ = 0, n_joining_ = 0, pending_ = 0;
    std::uint64_t generation_ = 0;
    bool stop_ = false;
    std::atomic<std::size_t> next_{0};
    std::exception_ptr error_;
};

// CPUs this process may run on (sched_getaffinity where available).
std::size_t available_cpus();

}  // namespace stemedge
