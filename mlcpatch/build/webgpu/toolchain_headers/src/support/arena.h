/*
 * Written for mlcpatch (Apache-2.0): the apache-tvm wheel lacks this header. A bump allocator
 * for short-lived RPC buffers: allocations are never freed one by one; RecycleAll() makes every
 * page reusable at once and FreeAll() returns them to the page allocator.
 */
#ifndef MLCPATCH_TVM_SRC_SUPPORT_ARENA_H_
#define MLCPATCH_TVM_SRC_SUPPORT_ARENA_H_

#include <cstddef>
#include <cstdlib>
#include <new>

namespace tvm {
namespace support {

/*! \brief Sits at the start of every page; `offset` is the first free byte from the page start. */
struct ArenaPageHeader {
  ArenaPageHeader* next;
  size_t size;
  size_t offset;
};

/*! \brief Pages from malloc, sized in multiples of kPageSize. */
class SimplePageAllocator {
 public:
  static constexpr size_t kPageSize = 16 << 10;
  static constexpr size_t kPageAlign = 1024;

  ArenaPageHeader* allocate(size_t min_size) {
    size_t npages = (min_size + kPageSize - 1) / kPageSize;
    void* data = std::malloc(npages * kPageSize);
    if (data == nullptr) throw std::bad_alloc();
    auto* page = static_cast<ArenaPageHeader*>(data);
    page->size = npages * kPageSize;
    page->offset = sizeof(ArenaPageHeader);
    return page;
  }

  void deallocate(ArenaPageHeader* page) { std::free(page); }
};

template <typename PageAllocator>
class GenericArena {
 public:
  explicit GenericArena(PageAllocator alloc = PageAllocator()) : alloc_(alloc) {}
  GenericArena(const GenericArena&) = delete;
  GenericArena& operator=(const GenericArena&) = delete;
  ~GenericArena() { FreeAll(); }

  void* Alloc(size_t size, size_t align = alignof(std::max_align_t)) {
    if (head_ != nullptr) {
      size_t start = (head_->offset + align - 1) / align * align;
      if (start + size <= head_->size) {
        head_->offset = start + size;
        return reinterpret_cast<char*>(head_) + start;
      }
    }
    NewPage(size + align + sizeof(ArenaPageHeader));
    size_t start = (head_->offset + align - 1) / align * align;
    head_->offset = start + size;
    return reinterpret_cast<char*>(head_) + start;
  }

  /*! \brief Room for `count` objects of type T (not constructed). */
  template <typename T>
  T* allocate_(int count = 1) {
    return static_cast<T*>(Alloc(sizeof(T) * static_cast<size_t>(count), alignof(T)));
  }

  /*! \brief Keep the pages but forget every allocation made from them. */
  void RecycleAll() {
    while (head_ != nullptr) {
      ArenaPageHeader* page = head_;
      head_ = page->next;
      page->offset = sizeof(ArenaPageHeader);
      page->next = free_;
      free_ = page;
    }
  }

  void FreeAll() {
    RecycleAll();
    while (free_ != nullptr) {
      ArenaPageHeader* page = free_;
      free_ = page->next;
      alloc_.deallocate(page);
    }
  }

 private:
  void NewPage(size_t min_size) {
    ArenaPageHeader* page = nullptr;
    // Reuse a recycled page when the first one is large enough, else ask for a new one.
    if (free_ != nullptr && free_->size >= min_size) {
      page = free_;
      free_ = page->next;
    } else {
      page = alloc_.allocate(min_size);
    }
    page->next = head_;
    head_ = page;
  }

  PageAllocator alloc_;
  ArenaPageHeader* head_{nullptr};
  ArenaPageHeader* free_{nullptr};
};

using Arena = GenericArena<SimplePageAllocator>;

}  // namespace support
}  // namespace tvm

#endif  // MLCPATCH_TVM_SRC_SUPPORT_ARENA_H_
