#pragma once
// Memory mapped from the kernel (anonymous, private) instead of taken from the heap: the weights
// copied out of a model file, the expert cache's slots, the KV cache, the bandwidth probe. A
// mapping can be advised to transparent huge pages (decode reads weights faster through 2 MiB
// pages than through 4 KiB ones), aligned past the page size, and given back whole on destruction.
#include <cstddef>
#include <string>

namespace crossmoe {

// Where the model loaders start each tensor in their copies of a file's weights: a cache line, so
// that the kernels' 64-byte loads of a matrix never straddle two lines (safetensors files align
// tensors to 8 bytes, GGUF files to 32).
inline constexpr size_t kTensorAlignment = 64;

class AnonymousMemory {
 public:
  struct Options {
    size_t alignment = 0;     // of data(): a power of two; 0 or anything up to the page size: a page
    bool huge_pages = false;  // madvise(MADV_HUGEPAGE): a hint, 4 KiB pages where THP is off
    bool touch = false;       // write every page now (zeros), so that first use does not fault
  };

  AnonymousMemory() = default;
  // Maps `bytes` (zeros), or nothing when bytes is 0; throws Error naming `purpose` ("the KV
  // cache") when the kernel refuses.
  AnonymousMemory(size_t bytes, const std::string& purpose, const Options& options);
  AnonymousMemory(AnonymousMemory&& other) noexcept;             // leaves `other` empty
  AnonymousMemory& operator=(AnonymousMemory&& other) noexcept;  // unmaps what this held; `other` empty
  AnonymousMemory(const AnonymousMemory&) = delete;
  AnonymousMemory& operator=(const AnonymousMemory&) = delete;
  ~AnonymousMemory();

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return data_ == nullptr; }
  template <class T>
  T* as() const {
    return reinterpret_cast<T*>(data_);
  }

 private:
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace crossmoe
