// Picks the backend (best instruction set the CPU supports, or the one asked for) and splits frame
// stacks over the thread pool.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>

#include "backend.hpp"
#include "stemedge/reduce.hpp"
#include "stemedge/thread_pool.hpp"

namespace stemedge {

#define STEMEDGE_DECLARE(isa) extern const BackendOps kBackend_##isa;
#ifdef STEMEDGE_HAVE_avx512
STEMEDGE_DECLARE(avx512)
#endif
#ifdef STEMEDGE_HAVE_avx2
STEMEDGE_DECLARE(avx2)
#endif
#ifdef STEMEDGE_HAVE_sse2
STEMEDGE_DECLARE(sse2)
#endif
#ifdef STEMEDGE_HAVE_native
STEMEDGE_DECLARE(native)
#endif
#ifdef STEMEDGE_HAVE_generic
STEMEDGE_DECLARE(generic)
#endif
STEMEDGE_DECLARE(ref)

namespace {

// Fastest first; "ref" is never chosen automatically.
const BackendOps* const kAll[] = {
#ifdef STEMEDGE_HAVE_native
    &kBackend_native,
#endif
#ifdef STEMEDGE_HAVE_avx512
    &kBackend_avx512,
#endif
#ifdef STEMEDGE_HAVE_avx2
    &kBackend_avx2,
#endif
#ifdef STEMEDGE_HAVE_sse2
    &kBackend_sse2,
#endif
#ifdef STEMEDGE_HAVE_generic
    &kBackend_generic,
#endif
    &kBackend_ref,
};

const BackendOps* best() {
    for (const BackendOps* b : kAll)
        if (b->supported()) return b;
    return &kBackend_ref;
}

const BackendOps* by_name(const std::string& name) {
    if (name == "auto") return best();
    for (const BackendOps* b : kAll)
        if (name == b->name) {
            if (!b->supported())
                throw std::invalid_argument("backend '" + name + "' is compiled but this CPU lacks " +
                                            b->description);
            return b;
        }
    std::string known;
    for (const BackendOps* b : kAll) known += std::string(known.empty() ? "" : ", ") + b->name;
    throw std::invalid_argument("unknown backend '" + name + "'; compiled: auto, " + known);
}

std::atomic<const BackendOps*>& current() {
    static std::atomic<const BackendOps*> cur{[] {
        const char* env = std::getenv("STEMEDGE_BACKEND");
        return env && *env ? by_name(env) : best();
    }()};
    return cur;
}

// Enough tasks per thread to balance uneven frames, few enough that each streams through memory.
constexpr std::size_t kTasksPerThread = 4;

template <class Fn>
void split_frames(std::size_t n, std::size_t nthreads, Fn&& fn) {
    ThreadPool& pool = ThreadPool::global();
    const std::size_t nt = std::min(nthreads == 0 ? pool.size() : nthreads, pool.size());
    const std::size_t ntasks = std::min(n, nt * kTasksPerThread);
    pool.run(ntasks, nt, [&](std::size_t t) {
        const std::size_t b = n * t / ntasks, e = n * (t + 1) / ntasks;
        fn(t, b, e);
    });
}

}  // namespace

std::size_t n_channels(const ReduceOptions& opt, std::size_t n_masks) {
    if (opt.moments.size() != n_masks || opt.thresholds.size() != n_masks)
        throw std::invalid_argument("moments and thresholds need one entry per mask (" +
                                    std::to_string(n_masks) + ")");
    std::size_t c = 0;
    for (std::size_t m = 0; m < n_masks; ++m) c += opt.moments[m] ? 3 : 1;
    return c;
}

void reduce_frames(const FrameStackView& frames, const MaskPlan& plan, const ReduceOptions& opt,
                   double* out) {
    if (frames.det_y != plan.det_y() || frames.det_x != plan.det_x())
        throw std::invalid_argument("frames have detector shape (" + std::to_string(frames.det_y) +
                                    ", " + std::to_string(frames.det_x) + ") but the masks are (" +
                                    std::to_string(plan.det_y()) + ", " +
                                    std::to_string(plan.det_x()) + ")");
    n_channels(opt, plan.n_masks());  // validates the per-mask options
    const BackendOps* b = current().load();
    split_frames(frames.n_frames(), opt.nthreads, [&](std::size_t, std::size_t s, std::size_t e) {
        b->reduce(frames, plan, opt, out, s, e);
    });
}

std::uint64_t read_pass(const FrameStackView& frames, std::size_t nthreads) {
    const BackendOps* b = current().load();
    const std::size_t ntasks_max = ThreadPool::global().size() * kTasksPerThread;
    std::vector<std::uint64_t> partial(ntasks_max, 0);
    split_frames(frames.n_frames(), nthreads, [&](std::size_t t, std::size_t s, std::size_t e) {
        partial[t] = b->read(frames, s, e);
    });
    std::uint64_t total = 0;
    for (auto v : partial) total += v;
    return total;
}

std::vector<std::string> compiled_backends() {
    std::vector<std::string> names;
    for (const BackendOps* b : kAll) names.emplace_back(b->name);
    return names;
}

std::vector<std::string> available_backends() {
    std::vector<std::string> names;
    for (const BackendOps* b : kAll)
        if (b->supported()) names.emplace_back(b->name);
    return names;
}

void set_backend(const std::string& name) { current().store(by_name(name)); }

std::string active_backend() { return current().load()->name; }

std::string backend_description(const std::string& name) {
    for (const BackendOps* b : kAll)
        if (name == b->name) return b->description;
    return {};
}

}  // namespace stemedge
