#include "stemedge/frame_ring.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

namespace stemedge {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kHugePage = std::size_t{2} << 20;

std::size_t round_up(std::size_t n, std::size_t m) { return (n + m - 1) / m * m; }

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Wait on `cv` until `ready()` or the timeout (< 0: forever). Returns ready().
template <class Pred>
bool wait_for(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, double timeout_s,
              Pred ready) {
    if (timeout_s < 0) {
        cv.wait(lock, ready);
        return true;
    }
    const auto deadline =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
    return cv.wait_until(lock, deadline, ready);
}

int latency_bin(double seconds) {
    const double us = seconds * 1e6;
    if (us < 1.0) return 0;
    const int b = 1 + static_cast<int>(std::floor(std::log2(us)));
    return std::min(b, RingCounters::kLatencyBins - 1);
}

}  // namespace

FrameRing::FrameRing(const RingConfig& config) : config_(config) {
    if (config.n_slots < 1 || config.n_slots > (1u << 20))
        throw std::invalid_argument("FrameRing: n_slots must be 1 … 2^20, got " + std::to_string(config.n_slots));
    if (config.slot_frames < 1 || config.slot_frames > (1u << 20))
        throw std::invalid_argument("FrameRing: slot_frames must be 1 … 2^20, got " +
                                    std::to_string(config.slot_frames));
    if (config.frame_bytes < 1)
        throw std::invalid_argument("FrameRing: frame_bytes must be positive");
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t payload = config.slot_frames * config.frame_bytes;
    if (payload / config.slot_frames != config.frame_bytes)
        throw std::invalid_argument("FrameRing: slot size overflows");
    slot_bytes_ = round_up(payload, page);
    slab_bytes_ = slot_bytes_ * config.n_slots;
    if (slab_bytes_ / config.n_slots != slot_bytes_) throw std::invalid_argument("FrameRing: size overflows");
    const bool huge = config.huge_pages && slab_bytes_ >= kHugePage;
    const std::size_t mapped = huge ? round_up(slab_bytes_, kHugePage) : slab_bytes_;
    void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (huge) huge_advised_ = madvise(p, mapped, MADV_HUGEPAGE) == 0;
#endif
    slab_ = static_cast<std::uint8_t*>(p);
    slab_bytes_ = mapped;
    // Touch every page now: page faults during acquisition would stall the producer.
    std::memset(slab_, 0, slab_bytes_);
    indices_.assign(config.n_slots * config.slot_frames, -1);
    nbytes_.assign(config.n_slots * config.slot_frames, 0);
    slots_.resize(config.n_slots);
    free_.reserve(config.n_slots);
    for (std::size_t i = config.n_slots; i-- > 0;) free_.push_back(static_cast<int>(i));
}

FrameRing::~FrameRing() {
    if (slab_) munmap(slab_, slab_bytes_);
}

void FrameRing::check_slot(int slot, State expected, const char* what) const {
    if (slot < 0 || static_cast<std::size_t>(slot) >= slots_.size())
        throw std::out_of_range(std::string(what) + ": slot " + std::to_string(slot) + " does not exist");
    if (slots_[static_cast<std::size_t>(slot)].state != expected)
        throw std::logic_error(std::string(what) + ": slot " + std::to_string(slot) +
                               " is not in the state this call needs (was it already committed or "
                               "released?)");
}

int FrameRing::take_free_locked(Lock& lock, double timeout_s) {
    if (aborted_ || closed_) return kClosed;
    if (free_.empty()) {
        ++c_.full_events;
        if (config_.policy == RingPolicy::kDrop) return kFull;
        const auto t0 = Clock::now();
        const bool ok = wait_for(can_write_, lock, timeout_s,
                                 [&] { return !free_.empty() || aborted_ || closed_; });
        c_.producer_wait_s += seconds_since(t0);
        if (aborted_ || closed_) return kClosed;
        if (!ok) return kTimeout;
    }
    const int slot = free_.back();
    free_.pop_back();
    slots_[static_cast<std::size_t>(slot)].state = State::kWriting;
    return slot;
}

int FrameRing::acquire_write(double timeout_s) {
    Lock lock(mu_);
    return take_free_locked(lock, timeout_s);
}

void FrameRing::commit(int slot, std::size_t n_frames, std::uint32_t encoding) {
    if (n_frames == 0) return cancel(slot);
    Lock lock(mu_);
    check_slot(slot, State::kWriting, "commit");
    if (n_frames > config_.slot_frames)
        throw std::invalid_argument("commit: " + std::to_string(n_frames) + " frames do not fit a slot of " +
                                    std::to_string(config_.slot_frames));
    Slot& s = slots_[static_cast<std::size_t>(slot)];
    if (aborted_) {  // the consumer side is gone: account the frames and recycle the slot
        c_.frames_in += n_frames;
        c_.frames_discarded += n_frames;
        s.state = State::kFree;
        free_.push_back(slot);
        return;
    }
    s.state = State::kFilled;
    s.n_frames = n_frames;
    s.encoding = encoding;
    s.sequence = next_sequence_++;
    s.committed = Clock::now();
    filled_.push_back(slot);
    c_.frames_in += n_frames;
    ++c_.stacks_in;
    c_.high_water = std::max(c_.high_water, filled_.size());
    lock.unlock();
    can_read_.notify_one();
}

void FrameRing::cancel(int slot) {
    {
        Lock lock(mu_);
        check_slot(slot, State::kWriting, "cancel");
        slots_[static_cast<std::size_t>(slot)].state = State::kFree;
        free_.push_back(slot);
    }
    can_write_.notify_one();
}

void FrameRing::count_dropped(std::uint64_t n) {
    Lock lock(mu_);
    c_.frames_dropped += n;
}

std::size_t FrameRing::push(const std::uint8_t* src, std::ptrdiff_t frame_stride, std::size_t n,
                            const std::int64_t* indices, double timeout_s) {
    std::size_t done = 0;
    while (done < n) {
        int slot;
        {
            Lock lock(mu_);
            slot = take_free_locked(lock, timeout_s);
            if (slot == kFull) {
                c_.frames_dropped += n - done;
                return n;
            }
        }
        if (slot < 0) return done;
        const std::size_t k = std::min(config_.slot_frames, n - done);
        std::uint8_t* dst = slot_data(slot);
        if (frame_stride == static_cast<std::ptrdiff_t>(config_.frame_bytes)) {
            std::memcpy(dst, src + static_cast<std::ptrdiff_t>(done) * frame_stride, k * config_.frame_bytes);
        } else {
            for (std::size_t i = 0; i < k; ++i)
                std::memcpy(dst + i * config_.frame_bytes,
                            src + static_cast<std::ptrdiff_t>(done + i) * frame_stride, config_.frame_bytes);
        }
        std::memcpy(slot_indices(slot), indices + done, k * sizeof(std::int64_t));
        std::fill_n(slot_nbytes(slot), k, static_cast<std::uint32_t>(config_.frame_bytes));
        commit(slot, k, 0);
        done += k;
    }
    return done;
}

int FrameRing::acquire_read(double timeout_s) {
    Lock lock(mu_);
    if (filled_.empty() && !closed_ && !aborted_) {
        const auto t0 = Clock::now();
        const bool ok = wait_for(can_read_, lock, timeout_s,
                                 [&] { return !filled_.empty() || closed_ || aborted_; });
        c_.consumer_wait_s += seconds_since(t0);
        if (!ok) return kTimeout;
    }
    if (aborted_ || filled_.empty()) return kClosed;  // closed and drained, or aborted
    const int slot = filled_.front();
    filled_.pop_front();
    slots_[static_cast<std::size_t>(slot)].state = State::kReading;
    ++c_.reading;
    return slot;
}

FrameRing::SlotInfo FrameRing::slot_info(int slot) const {
    Lock lock(mu_);
    const Slot& s = slots_.at(static_cast<std::size_t>(slot));
    return {s.n_frames, s.encoding, s.sequence};
}

void FrameRing::release(int slot) {
    {
        Lock lock(mu_);
        check_slot(slot, State::kReading, "release");
        Slot& s = slots_[static_cast<std::size_t>(slot)];
        const double lat = seconds_since(s.committed);
        c_.frames_processed += s.n_frames;
        ++c_.stacks_processed;
        --c_.reading;
        ++c_.latency_count;
        c_.latency_sum_s += lat;
        c_.latency_max_s = std::max(c_.latency_max_s, lat);
        ++c_.latency_hist[latency_bin(lat)];
        s.state = State::kFree;
        s.n_frames = 0;
        free_.push_back(slot);
    }
    can_write_.notify_one();
}

void FrameRing::close() {
    {
        Lock lock(mu_);
        closed_ = true;
    }
    can_read_.notify_all();
    can_write_.notify_all();
}

void FrameRing::abort() {
    {
        Lock lock(mu_);
        aborted_ = true;
        closed_ = true;
        for (int slot : filled_) {
            Slot& s = slots_[static_cast<std::size_t>(slot)];
            c_.frames_discarded += s.n_frames;
            s.state = State::kFree;
            s.n_frames = 0;
            free_.push_back(slot);
        }
        filled_.clear();
    }
    can_read_.notify_all();
    can_write_.notify_all();
}

bool FrameRing::closed() const {
    Lock lock(mu_);
    return closed_;
}

bool FrameRing::aborted() const {
    Lock lock(mu_);
    return aborted_;
}

RingCounters FrameRing::counters() const {
    Lock lock(mu_);
    RingCounters out = c_;
    out.filled = filled_.size();
    return out;
}

}  // namespace stemedge
