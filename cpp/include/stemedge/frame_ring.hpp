// FrameRing: a slab of fixed slots, each holding a stack of frames, handed from producers
// (detector receivers, file readers, the simulator) to consumers (analysis workers) without
// copying. Allocated once, page-aligned (huge pages where the kernel gives them).
//
// A slot moves free → writing → filled → reading → free. The producer fills a slot in place
// (a socket receive can land straight in it) and commits it with its frame count; consumers
// take filled slots in commit order, read them in place and release them. When no slot is free
// the producer blocks (kBlock, backpressure) or is told the ring is full (kDrop) and counts the
// frames it discards. Every frame is accounted for:
//     frames_in = frames_processed + pending (filled or being read) + frames_discarded
// and frames_dropped counts what never got in.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

namespace stemedge {

enum class RingPolicy : std::uint8_t { kBlock, kDrop };

struct RingConfig {
    std::size_t n_slots = 8;
    std::size_t slot_frames = 16;  // frames per slot
    std::size_t frame_bytes = 0;   // bytes per frame (uncompressed)
    RingPolicy policy = RingPolicy::kBlock;
    bool huge_pages = true;
};

// Counters, read as one consistent snapshot.
struct RingCounters {
    std::uint64_t frames_in = 0;         // committed by producers
    std::uint64_t frames_processed = 0;  // released by consumers
    std::uint64_t frames_dropped = 0;    // refused at the door (drop policy, or counted by callers)
    std::uint64_t frames_discarded = 0;  // accepted, then thrown away by abort()
    std::uint64_t stacks_in = 0;
    std::uint64_t stacks_processed = 0;
    std::uint64_t full_events = 0;  // producer found no free slot (it then waited or dropped)
    std::size_t filled = 0;         // slots waiting for a consumer now
    std::size_t reading = 0;        // slots held by consumers now
    std::size_t high_water = 0;     // most slots ever waiting for a consumer at once
    double producer_wait_s = 0;     // time producers spent blocked on a full ring
    double consumer_wait_s = 0;     // time consumers spent waiting on an empty ring
    // Commit → release latency of each stack.
    std::uint64_t latency_count = 0;
    double latency_sum_s = 0;
    double latency_max_s = 0;
    static constexpr int kLatencyBins = 40;  // bin b: [2^(b-1), 2^b) µs, bin 0: < 1 µs
    std::uint64_t latency_hist[kLatencyBins] = {};
};

class FrameRing {
public:
    // Results of acquire_*: a slot index (>= 0) or one of these.
    static constexpr int kTimeout = -1;  // nothing within the timeout
    static constexpr int kClosed = -2;   // closed and drained (read) / closed (write) / aborted
    static constexpr int kFull = -3;     // drop policy: no free slot now

    explicit FrameRing(const RingConfig& config);
    ~FrameRing();
    FrameRing(const FrameRing&) = delete;
    FrameRing& operator=(const FrameRing&) = delete;

    const RingConfig& config() const { return config_; }
    std::size_t slot_bytes() const { return slot_bytes_; }  // stride between slots (page multiple)
    std::uint8_t* data() { return slab_; }
    std::size_t slab_bytes() const { return slab_bytes_; }
    bool huge_pages_advised() const { return huge_advised_; }

    std::uint8_t* slot_data(int slot) { return slab_ + static_cast<std::size_t>(slot) * slot_bytes_; }
    std::int64_t* slot_indices(int slot) { return &indices_[static_cast<std::size_t>(slot) * config_.slot_frames]; }
    std::uint32_t* slot_nbytes(int slot) { return &nbytes_[static_cast<std::size_t>(slot) * config_.slot_frames]; }

    // Producer side. timeout_s < 0 waits forever.
    int acquire_write(double timeout_s);
    // Publish `n_frames` (1 … slot_frames) frames with `encoding` (0 = raw frames; other codes
    // mean per-frame payloads of slot_nbytes bytes, decoded by consumers). n_frames == 0 cancels.
    void commit(int slot, std::size_t n_frames, std::uint32_t encoding = 0);
    void cancel(int slot);
    void count_dropped(std::uint64_t n);
    // Copy n frames (frame i at src + i*frame_stride, contiguous frame_bytes each) into slots,
    // with their scan indices. Returns frames accepted (< n only on timeout or close; with the
    // drop policy the rest are counted as dropped and n is returned).
    std::size_t push(const std::uint8_t* src, std::ptrdiff_t frame_stride, std::size_t n,
                     const std::int64_t* indices, double timeout_s);

    // Consumer side.
    int acquire_read(double timeout_s);
    struct SlotInfo {
        std::size_t n_frames;
        std::uint32_t encoding;
        std::uint64_t sequence;  // commit order, from 0
    };
    SlotInfo slot_info(int slot) const;
    void release(int slot);

    // No more commits; consumers drain what is filled, then get kClosed.
    void close();
    // Stop now: every wait returns kClosed, filled slots are discarded (and counted).
    void abort();
    bool closed() const;
    bool aborted() const;

    RingCounters counters() const;

private:
    enum class State : std::uint8_t { kFree, kWriting, kFilled, kReading };
    struct Slot {
        State state = State::kFree;
        std::size_t n_frames = 0;
        std::uint32_t encoding = 0;
        std::uint64_t sequence = 0;
        std::chrono::steady_clock::time_point committed;
    };
    using Lock = std::unique_lock<std::mutex>;

    void check_slot(int slot, State expected, const char* what) const;
    int take_free_locked(Lock& lock, double timeout_s);

    RingConfig config_;
    std::size_t slot_bytes_ = 0;
    std::size_t slab_bytes_ = 0;
    std::uint8_t* slab_ = nullptr;
    bool huge_advised_ = false;
    std::vector<std::int64_t> indices_;
    std::vector<std::uint32_t> nbytes_;

    mutable std::mutex mu_;
    std::condition_variable can_write_;
    std::condition_variable can_read_;
    std::vector<Slot> slots_;
    std::vector<int> free_;    // LIFO: the most recently released slot is warm in cache
    std::deque<int> filled_;   // FIFO: commit order
    std::uint64_t next_sequence_ = 0;
    bool closed_ = false;
    bool aborted_ = false;
    RingCounters c_;
};

}  // namespace stemedge
