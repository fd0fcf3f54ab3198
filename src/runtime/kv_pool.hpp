#pragma once
// The keys and values of every sequence, in fixed-size blocks drawn from one pool allocated up
// front (so a memory limit is a block count, and running out is a clean "no" a scheduler can
// queue on rather than an allocation failure mid-step).
//
// Full blocks can be shared between sequences whose prompts begin alike: a block that fills is
// published under its content (the block before it and its tokens), and a new sequence whose
// prompt matches takes the published block instead of recomputing it. Blocks are refcounted; a
// published block nobody holds stays cached until the pool needs it (least recently freed first).
#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

#include "model/config.hpp"
#include "util/anonymous_memory.hpp"

namespace crossmoe {

class KvPool {
 public:
  // block_size: tokens per block; blocks: how many the pool holds.
  KvPool(const ModelConfig& config, int block_size, int blocks);
  // The largest block count that fits `bytes` of keys and values.
  static int64_t blocks_for_bytes(const ModelConfig& config, int block_size, int64_t bytes);
  // A block's memory: its positions rounded up to whole key tiles (kernels::kKeyTile).
  static int64_t bytes_per_block(const ModelConfig& config, int block_size);
  // The keys and values of one position, as stored (a value kept in its key counted once).
  static int64_t bytes_per_position(const ModelConfig& config);

  int block_size() const { return block_size_; }
  int blocks() const { return blocks_; }
  // Blocks that allocate() can hand out: never used, or cached and held by no sequence.
  int available() const { return int(free_.size() + evictable_.size()); }
  int in_use() const { return blocks_ - available(); }

  // Keys and values of block b, layer l, cache head g (ModelConfig::cache_heads, cache_key_dim,
  // cache_value_dim): keys in tiles of kernels::kKeyTile positions, [key dim][kKeyTile] each
  // (kernels.hpp), the last one whole even where block_size ends inside it; values
  // [block_size][value dim] (rows up to the last key tile's end). Where the values are in the keys
  // (ModelConfig::cache_values_in_keys) there are no values apart: value_block_floats() is 0.
  float* keys(int l, int b, int g) { return k_.as<float>() + offset(l, b, g) * key_floats_; }
  float* values(int l, int b, int g) { return v_.as<float>() + offset(l, b, g) * value_floats_; }
  // Floats of keys, and of values, per block, layer and kv head, padding included.
  size_t key_block_floats() const { return key_floats_; }
  size_t value_block_floats() const { return value_floats_; }

  // A block with refcount 1, or -1 when every block is held.
  int allocate();
  void retain(int b);
  void release(int b);
  int refcount(int b) const { return refs_[b]; }

  // The published block holding `tokens` (block_size of them) right after block `parent`
  // (-1 at the start of a sequence), or -1.
  int find(int parent, const int* tokens) const;
  // Publishes full block b as holding `tokens` after `parent`; does nothing when that content
  // is already published (two sequences computed the same prompt at once).
  void publish(int b, int parent, const int* tokens);
  // Takes b out of the cache (its content is about to change).
  void unpublish(int b);
  bool published(int b) const { return keys_of_[b] != nullptr; }

 private:
  // A block's content: what came before (the parent block as it was then: its generation
  // changes whenever it is reused, so children of evicted content never match) and its tokens.
  struct Key {
    int parent;
    uint64_t parent_generation;
    std::vector<int> tokens;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const;
  };
  // Index of block b's layer l, kv head g among all the pool's (layer, block, head) slots.
  size_t offset(int l, int b, int g) const { return (size_t(l) * blocks_ + size_t(b)) * heads_ + size_t(g); }
  Key key(int parent, const int* tokens) const;

  int block_size_, blocks_, heads_;
  size_t key_floats_, value_floats_;  // per block and head: whole key tiles of positions
  // Zeroed floats in an anonymous mapping advised to huge pages before anything touches it: a
  // decode step streams the context's keys and values through every layer, and on 4 KiB pages
  // the hardware prefetchers stop at each page's end (the weights sit in huge pages too).
  AnonymousMemory k_, v_;  // floats [layer][block][kv head][...]
  std::vector<int> refs_;
  std::vector<uint64_t> generation_;
  std::vector<int> free_;
  std::list<int> evictable_;  // published, refcount 0; least recently freed first
  std::vector<std::list<int>::iterator> evictable_at_;
  std::unordered_map<Key, int, KeyHash> cache_;
  std::vector<const Key*> keys_of_;  // the cache key of each published block, else null
};

}  // namespace crossmoe
