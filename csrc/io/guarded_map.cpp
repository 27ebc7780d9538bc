// See guarded_map.h. The handler runs in signal context: it touches only lock-free atomics
// and calls mmap (a plain system call on the platforms we build for).
#include "io/guarded_map.h"

#include <cerrno>

#if defined(__unix__) || defined(__APPLE__)
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <mutex>

namespace paramgeom {
namespace {

// Enough for every tensor in flight (the engine holds a few at a time); when full, the
// caller reads instead of mapping.
constexpr int kSlots = 4096;
// begin == 0: free; begin == kReserved: being filled (never matches an address range,
// because end is published before begin).
constexpr uintptr_t kReserved = 1;

struct Slot {
  std::atomic<uintptr_t> begin{0};
  std::atomic<uintptr_t> end{0};
};

Slot g_slots[kSlots];
std::atomic<uint64_t> g_faults{0};
std::atomic<int> g_live{0};
uintptr_t g_page = 4096;
struct sigaction g_previous;
std::mutex g_install_mutex;

void pass_on(int sig, siginfo_t* info, void* context) {
  const struct sigaction prev = g_previous;
  if (prev.sa_flags & SA_SIGINFO) {
    if (prev.sa_sigaction != nullptr) {
      prev.sa_sigaction(sig, info, context);
      return;
    }
  } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
    prev.sa_handler(sig);
    return;
  }
  // Default action: a bus error outside our mappings still ends the process as it would
  // have without us. The signal is blocked while we run, so it is delivered on return.
  signal(sig, SIG_DFL);
  raise(sig);
}

void on_sigbus(int sig, siginfo_t* info, void* context) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  for (int i = 0; i < kSlots; ++i) {
    const uintptr_t begin = g_slots[i].begin.load(std::memory_order_acquire);
    if (begin <= kReserved || addr < begin) continue;
    if (addr >= g_slots[i].end.load(std::memory_order_acquire)) continue;
    void* page = reinterpret_cast<void*>(addr & ~(g_page - 1));
    void* got = mmap(page, g_page, PROT_READ | PROT_WRITE,
                     MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (got == page) {
      g_faults.fetch_add(1, std::memory_order_relaxed);
      return;  // the faulting access is retried and now reads zeros
    }
    break;
  }
  pass_on(sig, info, context);
}

// Installs the handler, or re-installs it when someone replaced it since (faulthandler,
// for one, takes SIGBUS when enabled; ours must run first and chain to it).
int ensure_handler() {
  std::lock_guard<std::mutex> lock(g_install_mutex);
  struct sigaction now;
  if (sigaction(SIGBUS, nullptr, &now) != 0) return errno;
  if ((now.sa_flags & SA_SIGINFO) && now.sa_sigaction == &on_sigbus) return 0;
  long page = sysconf(_SC_PAGESIZE);
  if (page > 0) g_page = static_cast<uintptr_t>(page);
  struct sigaction ours = {};
  ours.sa_sigaction = &on_sigbus;
  ours.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&ours.sa_mask);
  g_previous = now;
  if (sigaction(SIGBUS, &ours, nullptr) != 0) return errno;
  return 0;
}

}  // namespace

int guarded_map(int fd, uint64_t offset, size_t length, GuardedMapping* out) {
  *out = GuardedMapping{};
  if (length == 0) return EINVAL;
  if (int err = ensure_handler()) return err;
  const uint64_t aligned = offset - offset % g_page;
  const size_t delta = static_cast<size_t>(offset - aligned);
  const size_t span = delta + length;
  int slot = -1;
  for (int i = 0; i < kSlots; ++i) {
    uintptr_t expected = 0;
    if (g_slots[i].begin.compare_exchange_strong(expected, kReserved,
                                                 std::memory_order_acq_rel)) {
      slot = i;
      break;
    }
  }
  if (slot < 0) return EAGAIN;
  void* base = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd,
                    static_cast<off_t>(aligned));
  if (base == MAP_FAILED) {
    const int err = errno;
    g_slots[slot].begin.store(0, std::memory_order_release);
    return err;
  }
  const uintptr_t b = reinterpret_cast<uintptr_t>(base);
  g_slots[slot].end.store(b + span, std::memory_order_release);
  g_slots[slot].begin.store(b, std::memory_order_release);
  g_live.fetch_add(1, std::memory_order_relaxed);
  // Start reading a cold file now, from the calling thread (the engine's prefetch thread).
  madvise(base, span, MADV_WILLNEED);
  out->base = base;
  out->length = span;
  out->delta = delta;
  out->slot = slot;
  return 0;
}

void guarded_unmap(GuardedMapping* m) {
  if (m->base == nullptr) return;
  if (m->slot >= 0) {
    // Unregister before unmapping, so no fault in a reused address range is taken for ours.
    g_slots[m->slot].begin.store(0, std::memory_order_release);
    g_slots[m->slot].end.store(0, std::memory_order_release);
    g_live.fetch_sub(1, std::memory_order_relaxed);
  }
  munmap(m->base, m->length);
  *m = GuardedMapping{};
}

uint64_t guarded_fault_count() { return g_faults.load(std::memory_order_relaxed); }

int guarded_live_count() { return g_live.load(std::memory_order_relaxed); }

}  // namespace paramgeom

#else  // no POSIX signals and mmap: callers read into private memory instead

namespace paramgeom {
int guarded_map(int, uint64_t, size_t, GuardedMapping* out) {
  *out = GuardedMapping{};
  return ENOSYS;
}
void guarded_unmap(GuardedMapping* m) { *m = GuardedMapping{}; }
uint64_t guarded_fault_count() { return 0; }
int guarded_live_count() { return 0; }
}  // namespace paramgeom

#endif
