#include "packed_weights.h"

#include <ATen/ATen.h>

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

// One kept packing: where the caller's weights were, how they were packed, a copy of their
// bytes. Never changed once kept, so a call may read it after the lock is released.
struct Entry {
  const void* data;
  at::ScalarType dtype;
  std::vector<int64_t> sizes;
  bool transposed;
  cpu::Panels panels;
  at::Tensor copy, packed;

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
  int64_t bytes() const { return int64_t(copy.nbytes() + packed.nbytes()); }
};

class Cache {
 public:
  std::shared_ptr<const Entry> find(const at::Tensor& w, const cpu::Panels& panels,
                                    bool transposed) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (!(*it)->packs(w, panels, transposed)) continue;
      entries_.splice(entries_.begin(), entries_, it);  // most recently used first
      return entries_.front();
    }
    return nullptr;
  }

  // Keeps `entry` in place of any for the same weights, dropping the least recently used
  // beyond the limit; one larger than the limit is not kept.
  void keep(std::shared_ptr<const Entry> entry) {
    std::list<std::shared_ptr<const Entry>> dropped;  // freed after the lock is released
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end();) {
      const auto next = std::next(it);
      if ((*it)->packs_same(*entry)) drop(it, dropped);
      it = next;
    }
    if (entry->bytes() > limit_) return;
    held_ += entry->bytes();
    entries_.push_front(std::move(entry));
    drop_to(limit_, dropped);
  }

  void count(bool hit) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++(hit ? hits_ : misses_);
  }

  packed_cache::Stats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {held_, limit_, int64_t(entries_.size()), hits_, misses_};
  }
  int64_t limit() {
    std::lock_guard<std::mutex> lock(mutex_);
    return limit_;
  }
  void set_limit(int64_t bytes) {
    std::list<std::shared_ptr<const Entry>> dropped;
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = bytes;
    drop_to(limit_, dropped);
  }
  void clear() {
    std::list<std::shared_ptr<const Entry>> dropped;
    std::lock_guard<std::mutex> lock(mutex_);
    drop_to(0, dropped);
  }

 private:
  using Entries = std::list<std::shared_ptr<const Entry>>;

  void drop(Entries::iterator it, Entries& dropped) {
    held_ -= (*it)->bytes();
    dropped.splice(dropped.end(), entries_, it);
  }
  void drop_to(int64_t bytes, Entries& dropped) {
    while (held_ > bytes) drop(std::prev(entries_.end()), dropped);
  }

  std::mutex mutex_;
  Entries entries_;
  int64_t held_ = 0, hits_ = 0, misses_ = 0;
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
  if (int64_t(source.nbytes() + packed.nbytes()) > cache().limit()) return packed;  // no copy
  auto entry = std::make_shared<Entry>(
      Entry{source.data_ptr(), source.scalar_type(), source.sizes().vec(), transposed, panels,
            fresh(source.sizes(), source.options()), packed});
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
