#include "runtime/kv_pool.hpp"

#include <algorithm>
#include <string>

#include "kernels/kernels.hpp"
#include "util/error.hpp"

namespace crossmoe {

namespace {
int64_t whole_tiles(int block_size) {
  return (int64_t(block_size) + kernels::kKeyTile - 1) / kernels::kKeyTile * kernels::kKeyTile;
}

int64_t stored_value_dim(const ModelConfig& c) { return c.cache_values_in_keys() ? 0 : c.cache_value_dim(); }
}  // namespace

int64_t KvPool::bytes_per_position(const ModelConfig& c) {
  return int64_t(c.num_layers) * c.cache_heads() * (c.cache_key_dim() + stored_value_dim(c)) * int64_t(sizeof(float));
}

int64_t KvPool::bytes_per_block(const ModelConfig& c, int block_size) {
  return bytes_per_position(c) * whole_tiles(block_size);
}

int64_t KvPool::blocks_for_bytes(const ModelConfig& c, int block_size, int64_t bytes) {
  return bytes / bytes_per_block(c, block_size);
}

KvPool::KvPool(const ModelConfig& c, int block_size, int blocks)
    : block_size_(block_size), blocks_(blocks), heads_(c.cache_heads()),
      key_floats_(size_t(whole_tiles(block_size)) * size_t(c.cache_key_dim())),
      value_floats_(size_t(whole_tiles(block_size)) * size_t(stored_value_dim(c))) {
  require(block_size > 0 && blocks > 0, "the KV cache needs at least one block of at least one token (got " +
                                            std::to_string(blocks) + " blocks of " + std::to_string(block_size) + ")");
  const size_t slots = size_t(c.num_layers) * blocks * heads_;
  // Touched now (the mapping reads as zeros already), so that the server's first requests do not
  // pay the page faults and the zeroing of the pages they reach in their time to first token.
  const AnonymousMemory::Options options{.huge_pages = true, .touch = true};
  k_ = AnonymousMemory(slots * key_floats_ * sizeof(float), "the KV cache's keys", options);
  v_ = AnonymousMemory(slots * value_floats_ * sizeof(float), "the KV cache's values", options);  // none when in keys
  refs_.assign(blocks, 0);
  generation_.assign(blocks, 0);
  evictable_at_.resize(blocks);
  keys_of_.assign(blocks, nullptr);
  for (int b = blocks - 1; b >= 0; --b) free_.push_back(b);
}

size_t KvPool::KeyHash::operator()(const Key& k) const {
  // FNV-1a over the parent and the tokens.
  uint64_t h = 1469598103934665603ull;
  const auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
  mix(uint64_t(int64_t(k.parent)));
  mix(k.parent_generation);
  for (int t : k.tokens) mix(uint64_t(uint32_t(t)));
  return size_t(h);
}

KvPool::Key KvPool::key(int parent, const int* tokens) const {
  return {parent, parent < 0 ? 0 : generation_[parent], std::vector<int>(tokens, tokens + block_size_)};
}

int KvPool::allocate() {
  int b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (!evictable_.empty()) {
    b = evictable_.front();
    evictable_.pop_front();
    unpublish(b);
  } else {
    return -1;
  }
  ++generation_[b];
  refs_[b] = 1;
  return b;
}

void KvPool::retain(int b) {
  if (refs_[b]++ == 0) evictable_.erase(evictable_at_[b]);  // only published blocks are found at refcount 0
}

void KvPool::release(int b) {
  require(refs_[b] > 0, "KV block " + std::to_string(b) + " released more often than held");
  if (--refs_[b] > 0) return;
  if (published(b)) {
    evictable_at_[b] = evictable_.insert(evictable_.end(), b);
  } else {
    free_.push_back(b);
  }
}

int KvPool::find(int parent, const int* tokens) const {
  const auto it = cache_.find(key(parent, tokens));
  return it == cache_.end() ? -1 : it->second;
}

void KvPool::publish(int b, int parent, const int* tokens) {
  if (published(b)) return;
  const auto [it, added] = cache_.emplace(key(parent, tokens), b);
  if (added) keys_of_[b] = &it->first;
}

void KvPool::unpublish(int b) {
  if (!published(b)) return;
  cache_.erase(*keys_of_[b]);
  keys_of_[b] = nullptr;
}

}  // namespace crossmoe
