// Read-only views of a file's bytes that survive the file shrinking under them.
//
// A memory-mapped page past a file's new end raises SIGBUS on access, which kills the
// process (Python cannot catch it). A guarded mapping is registered with a SIGBUS handler
// that, for a fault inside it, maps a zero page over the faulting page and counts the
// fault, so the access completes (reading zeros) instead of killing the process. The
// caller then learns that the file changed (the fault count moved, and the file's size
// with it) and discards what it computed from that mapping. Faults outside every guarded
// mapping go to the handler that was installed before ours (or the default action).
//
// POSIX only (Linux, macOS); elsewhere guarded_map returns ENOSYS and callers read instead.
#pragma once

#include <cstddef>
#include <cstdint>

namespace paramgeom {

struct GuardedMapping {
  void* base = nullptr;   // start of the page-aligned mapping
  size_t length = 0;      // bytes mapped from base
  size_t delta = 0;       // offset of the requested byte range from base
  int slot = -1;          // registration slot, -1 when not registered
};

// Map bytes [offset, offset + length) of `fd` private and copy-on-write (writes by the
// caller change its own pages, never the file) and guard them. 0 on success, else an errno
// value (EAGAIN: every guard slot is taken; ENOSYS: unsupported platform).
int guarded_map(int fd, uint64_t offset, size_t length, GuardedMapping* out);

// Unregister and unmap. Safe to call once per successful guarded_map.
void guarded_unmap(GuardedMapping* m);

// Faults turned into zero pages since the process started (monotonic).
uint64_t guarded_fault_count();

// Number of guarded mappings alive now.
int guarded_live_count();

}  // namespace paramgeom
