#include "packed_weights.h"

#include <ATen/core/Tensor.h>

#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <vector>

#include "prepare.h"
#include "scratch.h"
#include "sequence.h"

namespace fusedrnn {
namespace {

bool same_panels(const cpu::Panels& a, const cpu::Panels& b) {
  return a.isa == b.isa && a.gates == b.gates && a.hidden == b.hidden && a.depth == b.depth &&
         a.lanes == b.lanes && a.blocks == b.blocks && a.count == b.count && a.bf16 == b.bf16;
}

// One kept packing: whose weights (their storage, weakly, and address), how they were packed,
// a copy of their bytes. Never changed once kept, so a call may read it after the lock is
// released.
struct Entry {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;  // expired once the weights are freed
  const void* data;
  at::ScalarType dtype;
  std::vector<int64_t> sizes;
  bool transposed;
  cpu::Panels panels;
  at::Tensor packed;
  at::Tensor copy;  // allocated and filled once the cache will keep the entry

  bool packs(const at::Tensor& w, const cpu::Panels& p, bool t) const {
    return data == w.data_ptr() && dtype == w.scalar_type() && w.sizes().equals(sizes) &&
           transposed == t && same_panels(panels, p);
  }
  bool packs_same(const Entry& other) const {
    return data == other.data && dtype == other.dtype && sizes == other.sizes &&
           transposed == other.transposed && same_panels(panels, other.panels);
  }
  bool holds_bytes_of(const at::Tensor& w) const {
    return std::memcmp(copy.data_ptr(), w.data_ptr(), copy.nbytes()) == 0;
  }
  int64_t bytes() const {  // the copy's counted before it is made
    return c10::multiply_integers(sizes) * int64_t(c10::elementSize(dtype)) +
           int64_t(packed.nbytes());
  }
};

// Lookups within which a kept packing that was used is not dropped for a new one. Plain LRU
// thrashed when a model's weights outgrew the limit: each call dropped the packing the next
// lookup needed and copied the weights for one it would drop, and an LSTM of three layers at
// H=1024 (96 MB of packings and copies) took 1.4x as long at T=10 B=1 as with no cache. Now
// the packings kept first keep hitting and the rest are packed per call, with no copy; a
// packing left unused this many lookups (a model no longer called) gives way, and one whose
// weights were freed goes at once.
constexpr int64_t kRecentLookups = 256;

class Cache {
 public:
  std::shared_ptr<const Entry> find(const at::Tensor& w, const cpu::Panels& panels,
                                    bool transposed) {
    Entries dropped;  // freed after the lock is released
    std::lock_guard<std::mutex> lock(mutex_);
    ++lookups_;
    drop_freed(dropped);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (!it->entry->packs(w, panels, transposed)) continue;
      it->last_used = lookups_;
      entries_.splice(entries_.begin(), entries_, it);  // most recently used first
      return entries_.front().entry;
    }
    return nullptr;
  }

  // Whether keep() would keep `entry` (so that the caller copies the weights only then): it
  // replaces any for the same weights, and drops only packings not used within
  // kRecentLookups, least recently used first.
  bool would_keep(const Entry& entry) {
    std::lock_guard<std::mutex> lock(mutex_);
    return room_for(entry) >= 0;
  }

  void keep(std::shared_ptr<const Entry> entry) {
    Entries dropped;
    std::lock_guard<std::mutex> lock(mutex_);
    drop_freed(dropped);
    const int64_t droppable = room_for(*entry);
    if (droppable < 0) return;
    drop_if([&](const Entry& kept) { return kept.packs_same(*entry); }, dropped);
    for (int64_t i = 0; i < droppable; ++i) drop(std::prev(entries_.end()), dropped);
    held_ += entry->bytes();
    entries_.push_front({std::move(entry), lookups_});
  }

  void count(bool hit) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++(hit ? hits_ : misses_);
  }

  packed_cache::Stats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {held_, limit_, int64_t(entries_.size()), hits_, misses_};
  }
  void set_limit(int64_t bytes) {
    Entries dropped;
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = bytes;
    drop_to(limit_, dropped);
  }
  void clear() {
    Entries dropped;
    std::lock_guard<std::mutex> lock(mutex_);
    drop_to(0, dropped);
  }

 private:
  struct Kept {
    std::shared_ptr<const Entry> entry;
    int64_t last_used;  // lookups_ then
  };
  using Entries = std::list<Kept>;

  // How many of the least recently used packings keeping `entry` drops beside the one it
  // replaces, or -1 where it does not fit, or the room would cost a recently used packing.
  int64_t room_for(const Entry& entry) const {
    int64_t needed = held_ + entry.bytes() - limit_;
    for (const Kept& kept : entries_)
      if (kept.entry->packs_same(entry)) needed -= kept.entry->bytes();
    int64_t count = 0;
    for (auto it = entries_.rbegin(); needed > 0 && it != entries_.rend(); ++it) {
      if (it->entry->packs_same(entry)) continue;
      if (lookups_ - it->last_used < kRecentLookups) return -1;
      needed -= it->entry->bytes();
      ++count;
    }
    return needed > 0 ? -1 : count;
  }
  void drop(Entries::iterator it, Entries& dropped) {
    held_ -= it->entry->bytes();
    dropped.splice(dropped.end(), entries_, it);
  }
  void drop_to(int64_t bytes, Entries& dropped) {
    while (held_ > bytes) drop(std::prev(entries_.end()), dropped);
  }
  template <typename Predicate>
  void drop_if(const Predicate& predicate, Entries& dropped) {
    for (auto it = entries_.begin(); it != entries_.end();) {
      const auto next = std::next(it);
      if (predicate(*it->entry)) drop(it, dropped);
      it = next;
    }
  }
  void drop_freed(Entries& dropped) {
    drop_if([](const Entry& kept) { return kept.storage.expired(); }, dropped);
  }

  std::mutex mutex_;
  Entries entries_;
  int64_t held_ = 0, hits_ = 0, misses_ = 0, lookups_ = 0;
  int64_t limit_ = bytes_from_environment("FUSEDRNN_PACKED_WEIGHTS_LIMIT_MB", 64);
};

Cache& cache() {
  static Cache* instance = new Cache();  // never destroyed: calls may still run at exit
  return *instance;
}

at::Tensor pack(const cpu::Panels& panels, const at::Tensor& w, bool transposed) {
  at::Tensor packed = fresh({panels.size()},
                            w.options().dtype(panels.bf16 ? at::kBFloat16 : w.scalar_type()));
  cpu::pack(dtype_of(w), panels, w.data_ptr(), transposed, packed.data_ptr());
  return packed;
}

}  // namespace

at::Tensor packed_weights(const cpu::Panels& panels, const at::Tensor& w, bool transposed,
                          const std::optional<at::Tensor>& passed) {
  if (!passed || !passed->is_contiguous()) return pack(panels, w, transposed);
  const at::Tensor& source = *passed;
  if (const auto found = cache().find(source, panels, transposed);
      found && found->holds_bytes_of(source)) {
    cache().count(true);
    return found->packed;
  }
  cache().count(false);
  const at::Tensor packed = pack(panels, w, transposed);
  auto entry = std::make_shared<Entry>(
      Entry{source.storage().getWeakStorageImpl(), source.data_ptr(), source.scalar_type(),
            source.sizes().vec(), transposed, panels, packed, {}});
  if (!cache().would_keep(*entry)) return packed;
  entry->copy = fresh(source.sizes(), source.options());
  std::memcpy(entry->copy.data_ptr(), source.data_ptr(), source.nbytes());
  cache().keep(std::move(entry));
  return packed;
}

namespace packed_cache {
Stats stats() { return cache().stats(); }
void set_limit_bytes(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "fusedrnn: the packed weights' limit must be at least 0 bytes, got ",
              bytes);
  cache().set_limit(bytes);
}
void clear() { cache().clear(); }
}  // namespace packed_cache

}  // namespace fusedrnn
