#include "stemedge/thread_pool.hpp"

#include <algorithm>

#if defined(__linux__)
#include <sched.h>
#endif

namespace stemedge {

std::size_t available_cpus() {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return static_cast<std::size_t>(n);
    }
#endif
    const unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? n : 1;
}

ThreadPool::ThreadPool(std::size_t n_threads) {
    const std::size_t n_workers = n_threads > 1 ? n_threads - 1 : 0;
    workers_.reserve(n_workers);
    for (std::size_t i = 0; i < n_workers; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lk(m_);
        stop_ = true;
    }
    start_cv_.notify_all();
    for (auto& t : workers_) t.join();
}

void ThreadPool::drain() {
    for (;;) {
        const std::size_t task = next_.fetch_add(1, std::memory_order_relaxed);
        if (task >= n_tasks_) return;
        try {
            (*fn_)(task);
        } catch (...) {
            std::lock_guard<std::mutex> lk(m_);
            if (!error_) error_ = std::current_exception();
            next_.store(n_tasks_, std::memory_order_relaxed);  // stop handing out work
        }
    }
}

void ThreadPool::worker_loop(std::size_t id) {
    std::uint64_t seen = 0;
    for (;;) {
        {
            std::unique_lock<std::mutex> lk(m_);
            start_cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
            if (stop_) return;
            seen = generation_;
            if (id >= n_joining_) continue;  // this job wants fewer threads
        }
        drain();
        {
            std::lock_guard<std::mutex> lk(m_);
            if (--pending_ == 0) done_cv_.notify_one();
        }
    }
}

void ThreadPool::run(std::size_t n_tasks, std::size_t max_threads,
                     const std::function<void(std::size_t)>& fn) {
    if (n_tasks == 0) return;
    const std::size_t n = std::min({max_threads == 0 ? size() : max_threads, size(), n_tasks});
    if (n <= 1) {
        for (std::size_t t = 0; t < n_tasks; ++t) fn(t);
        return;
    }
    std::lock_guard<std::mutex> serial(run_mutex_);
    {
        std::lock_guard<std::mutex> lk(m_);
        fn_ = &fn;
        n_tasks_ = n_tasks;
        n_joining_ = n - 1;
        pending_ = n - 1;
        error_ = nullptr;
        next_.store(0, std::memory_order_relaxed);
        ++generation_;
    }
    start_cv_.notify_all();
    drain();
    std::exception_ptr error;
    {
        std::unique_lock<std::mutex> lk(m_);
        done_cv_.wait(lk, [&] { return pending_ == 0; });
        fn_ = nullptr;
        error = error_;
        error_ = nullptr;
    }
    if (error) std::rethrow_exception(error);
}

ThreadPool& ThreadPool::global() {
    static ThreadPool pool(available_cpus());
    return pool;
}

}  // namespace stemedge
