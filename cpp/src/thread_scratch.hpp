// Per-thread buffers reused across calls: the codec's large temporaries and the bitshuffle-LZ4
// decoder's block buffers. Fresh pages are dear on a VM: with a new allocation per chunk, glibc
// handed the freed blocks back to the kernel and a dense encode spent a quarter of its time
// faulting them in again (docs/codec.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace stemedge {

// A buffer above this many bytes is freed when its borrower is done, not kept for the thread.
constexpr std::size_t kScratchKeepBytes = std::size_t{48} << 20;

// Bytes whose contents are undefined: it grows without zeroing, so pages that are never written
// are never touched (the rANS word buffer is sized for the worst case, used from the top).
class RawBytes {
  public:
    std::uint8_t* ensure(std::size_t n) {
        if (n > n_) {
            p_.reset(new std::uint8_t[n]);
            n_ = n;
        }
        return p_.get();
    }
    std::size_t capacity() const { return n_; }

  private:
    std::unique_ptr<std::uint8_t[]> p_;
    std::size_t n_ = 0;
};

// At least n bytes of v (new bytes zeroed; what was there is kept).
inline std::uint8_t* grow(std::vector<std::uint8_t>& v, std::size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
}

// The calling thread's buffer `Tag` (V: RawBytes or std::vector<std::uint8_t>, contents as the
// last borrower left them), borrowed for this object's life and handed back when it goes. A
// nested borrower of the same Tag gets an empty one; the larger of the two is kept.
template <class V, class Tag>
class ThreadScratch {
  public:
    ThreadScratch() : v_(std::move(slot())) { slot() = V(); }
    ~ThreadScratch() {
        if (v_.capacity() <= kScratchKeepBytes && v_.capacity() >= slot().capacity()) slot() = std::move(v_);
    }
    ThreadScratch(const ThreadScratch&) = delete;
    ThreadScratch& operator=(const ThreadScratch&) = delete;
    V& operator*() { return v_; }
    V* operator->() { return &v_; }

  private:
    static V& slot() {
        thread_local V v;
        return v;
    }
    V v_;
};

}  // namespace stemedge
