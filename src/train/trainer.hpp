#pragma once
// The training loop: AdamW with warmup + cosine decay, gradient clipping and accumulation,
// load balancing (auxiliary loss, and the bias update for sigmoid routers), progressive scaling
// routing, validation perplexity, a CSV log and an SVG loss curve, atomic resumable checkpoints
// and export to a Hugging Face directory the runtime loads.
//
// Two kinds of data, one loop:
//   pre-training   windows of a token stream (`crossmoe data prepare`), loss on every token: random
//                  windows (with replacement), or every window once per epoch (WindowSampler)
//   SFT            chat conversations (options.sft_file, see train/sft_data.hpp) rendered through
//                  the starting model's chat template, one conversation per row of a batch
//                  (truncated to seq_len + 1 tokens, right-padded), loss on assistant tokens only:
//                  the mean cross-entropy over the trained targets of each micro-batch. Every
//                  `sft_validation_every`-th conversation is held out for the validation loss.
//                  Conversations are visited in a seeded shuffled order, epoch after epoch.
//
// Output directory:
//   log.csv, loss.svg                     one row per logged step; the curve of train/val loss
//   checkpoints/step-NNNNNNN/             state.json (step, tokens, the model description and the
//                                         settings), manifest.json and one rank-RRRRR.safetensors per
//                                         rank: its share of the weights and AdamW moments
//                                         (train/checkpoint_state.hpp; the older whole layout,
//                                         model.safetensors and optimizer.safetensors, resumes too)
//   checkpoints/latest                    name of the newest checkpoint (informational: resume
//                                         scans the step-* directories for the newest complete one)
//   model/                                the exported model (config.json, generation_config.json, weights)
//
// Resuming (options.resume) continues from the newest complete checkpoint, bit for bit as if
// the run had not stopped. The settings that shape the trained weights (training_settings) are
// stored in every checkpoint; resuming with different ones is refused unless force_settings is
// set (e.g. to train past the planned --steps: the cosine schedule then stretches to the new end).
// A directory with a log or checkpoints but no complete checkpoint is refused, never overwritten.
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "model/config.hpp"
#include "train/checkpoint_state.hpp"
#include "train/checkpoint_tensors.hpp"
#include "train/optimizer.hpp"
#include "train/sft_data.hpp"
#include "train/torch_model.hpp"
#include "train/train_options.hpp"
#include "util/dtype.hpp"

namespace crossmoe::train {


struct TrainResult {
  int64_t steps = 0;
  double final_train_loss = 0, final_val_loss = 0;
  double tokens_per_second = 0;
  std::filesystem::path model_dir;
};

// Model FLOPs per trained token: 6 x (active non-embedding parameters, lm_head included) for the
// matrix products forward and backward, plus causal attention scores and values (6 x H x hd x T / 2 x 2).
double model_flops_per_token(const ModelConfig& config, int seq_len);

// Trains `config` (ignored when options.init_model or a resumed checkpoint gives the model).
TrainResult train_model(const ModelConfig& config, const TrainOptions& options);

// lr at a step: linear warmup from lr/warmup to lr, then cosine to lr * min_lr_ratio at `steps`.
double learning_rate(const TrainOptions& options, int64_t step);

// Next-token cross-entropy of logits [B, T, V] against targets [B, T]: the mean over all targets,
// or with a mask [B, T] (1 = counts), the mean over the targets the mask keeps.
torch::Tensor next_token_loss(const torch::Tensor& logits, const torch::Tensor& targets,
                              const torch::Tensor& mask = {});

// SFT rows: inputs, targets and the loss mask [B, T] (float, 1 = trained) of the given
// conversations, each cut to at most seq_len + 1 tokens, right-padded with token 0 (masked) to
// the longest row. T = the longest row's length - 1.
// Bitwise-repeatable runs (`train --deterministic`): PyTorch's deterministic kernels (an op without
// one is an error naming it, not a silent difference), no cuDNN autotuning, and the cuBLAS
// workspace setting its deterministic reductions need. cuBLAS reads that from the environment
// when it starts, so this runs before the first matrix product; a value already set is kept.
// On CUDA the deterministic kernels are slower (atomics replaced by sorts).
void use_deterministic_algorithms();

struct SftBatch {
  torch::Tensor input, target, mask;
};
// Rows of `examples`, each cut to seq_len + 1 tokens and padded to the longest (or to `pad_like`'s
// longest, when given: a data-parallel rank pads its rows as the global batch is padded, so that the
// padding's routing statistics are one process's).
SftBatch sft_batch(const std::vector<const SftExample*>& examples, int seq_len, torch::Device device,
                   const std::vector<const SftExample*>& pad_like = {});

// Mean next-token cross-entropy on `batches` x batch_size windows of `tokens`, spread evenly over
// them (all windows when there are no more than that). Under expert parallelism every rank
// evaluates the same batches with its share of the experts; under tensor parallelism every rank of a
// group with its slices.
double evaluate_loss(const TorchModel& model, const std::vector<uint32_t>& tokens, int batches, int batch_size,
                     int seq_len, torch::ScalarType compute_dtype, const ExpertParallel& experts = {},
                     const TensorParallel& tensors = {});
// SFT: mean cross-entropy over the trained targets of the first `batches` x batch_size
// conversations (each target weighs the same, whatever its conversation's length).
double evaluate_sft_loss(const TorchModel& model, const std::vector<SftExample>& examples, int batches, int batch_size,
                         int seq_len, torch::ScalarType compute_dtype, const ExpertParallel& experts = {},
                         const TensorParallel& tensors = {});

// Visits `count` items in a seeded order, a fresh permutation every epoch: position p is the
// (p % count)-th item of epoch p / count's permutation, a pure function of (seed, stream, p), so
// resumed runs and data-parallel ranks see the same items. Keeps one epoch's permutation.
class EpochOrder {
 public:
  EpochOrder(uint64_t seed, uint64_t stream, size_t count);
  size_t at(uint64_t position);

 private:
  uint64_t seed_, stream_;
  size_t count_;
  uint64_t epoch_ = 0;
  std::vector<size_t> order_;
};

// Where the rows of each global micro-batch start in the training stream of `tokens` tokens
// (every row reads seq_len + 1 tokens: inputs and the targets shifted by one).
//   random  uniform starts, drawn with replacement (the same windows recur, overlapping)
//   epoch   the stream cut at a stride of seq_len into windows_per_epoch() windows, so that
//           consecutive windows share one token and every token but the first is a target once
//           per epoch; rows take them in an EpochOrder, epoch after epoch
// Micro-batch `index` (step * accum + micro) has rows index * batch ... + batch - 1: what a row
// reads depends only on the seed and its position, not on the rank or on resuming.
class WindowSampler {
 public:
  WindowSampler(const TrainOptions& options, int64_t tokens);
  std::vector<int64_t> starts(uint64_t micro_batch_index);  // options.batch_size starts
  int64_t windows_per_epoch() const { return windows_; }

 private:
  bool epoch_;
  uint64_t seed_;
  int batch_, seq_len_;
  int64_t windows_, max_start_;
  EpochOrder order_;
};

// The loss curve as an SVG chart: train loss (every row) and validation loss (rows that have one)
// against tokens seen.
void write_loss_svg(const std::filesystem::path& csv, const std::filesystem::path& svg);

}  // namespace crossmoe::train
