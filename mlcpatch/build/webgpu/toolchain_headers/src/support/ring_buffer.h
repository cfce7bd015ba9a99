/*
 * Written for mlcpatch (Apache-2.0): the apache-tvm wheel lacks this header. A growable FIFO
 * of bytes, used by the RPC endpoint the web runtime compiles in.
 */
#ifndef MLCPATCH_TVM_SRC_SUPPORT_RING_BUFFER_H_
#define MLCPATCH_TVM_SRC_SUPPORT_RING_BUFFER_H_

#include <algorithm>
#include <cstring>
#include <vector>

namespace tvm {
namespace support {

class RingBuffer {
 public:
  RingBuffer() : ring_(kInitialCapacity) {}

  size_t bytes_available() const { return size_; }
  size_t capacity() const { return ring_.size(); }

  /*! \brief Make room for at least `n` bytes in total, keeping the unread ones in order. */
  void Reserve(size_t n) {
    if (n <= ring_.size()) return;
    size_t capacity = ring_.size();
    while (capacity < n) capacity *= 2;
    std::vector<char> grown(capacity);
    CopyOut(grown.data(), size_);
    ring_.swap(grown);
    head_ = 0;
  }

  /*! \brief Take `size` bytes; the caller must know they are available. */
  void Read(void* data, size_t size) {
    CopyOut(static_cast<char*>(data), size);
    Drop(size);
  }

  void Write(const void* data, size_t size) {
    Reserve(size_ + size);
    const char* src = static_cast<const char*>(data);
    size_t tail = (head_ + size_) % ring_.size();
    size_t first = std::min(size, ring_.size() - tail);
    std::memcpy(ring_.data() + tail, src, first);
    std::memcpy(ring_.data(), src + first, size - first);
    size_ += size;
  }

  /*!
   * \brief Hand up to `max_nbytes` unread bytes (one contiguous run) to `f(const void*, size_t)`,
   *  which returns how many it consumed.
   */
  template <typename F>
  size_t ReadWithCallback(F f, size_t max_nbytes) {
    size_t n = std::min({max_nbytes, size_, ring_.size() - head_});
    if (n == 0) return 0;
    size_t used = f(ring_.data() + head_, n);
    Drop(used);
    return used;
  }

  /*!
   * \brief Let `f(void*, size_t)` fill up to `max_nbytes` free bytes (one contiguous run);
   *  it returns how many it wrote.
   */
  template <typename F>
  size_t WriteWithCallback(F f, size_t max_nbytes) {
    Reserve(size_ + max_nbytes);
    size_t tail = (head_ + size_) % ring_.size();
    size_t room = tail >= head_ && size_ != ring_.size() ? ring_.size() - tail : head_ - tail;
    size_t n = std::min(max_nbytes, room);
    if (n == 0) return 0;
    size_t written = f(ring_.data() + tail, n);
    size_ += written;
    return written;
  }

 private:
  static constexpr size_t kInitialCapacity = 1024;

  void CopyOut(char* dst, size_t size) const {
    size_t first = std::min(size, ring_.size() - head_);
    std::memcpy(dst, ring_.data() + head_, first);
    std::memcpy(dst + first, ring_.data(), size - first);
  }

  void Drop(size_t size) {
    head_ = (head_ + size) % ring_.size();
    size_ -= size;
    if (size_ == 0) head_ = 0;
  }

  std::vector<char> ring_;
  size_t head_{0};
  size_t size_{0};
};

}  // namespace support
}  // namespace tvm

#endif  // MLCPATCH_TVM_SRC_SUPPORT_RING_BUFFER_H_
