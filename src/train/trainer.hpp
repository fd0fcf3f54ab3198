#pragma once
// The training loop: AdamW with warmup + cosine decay, gradient clipping and accumulation,
// load balancing (auxiliary loss, and the bias update for sigmoid routers), progressive scaling
// routing, validation perplexity, a CSV log and an SVG loss curve, atomic resumable checkpoints
// and export to a Hugging Face directory the runtime loads.
//
// Two kinds of data, one loop:
//   pre-training   random windows of a token stream (`crossmoe data prepare`), loss on every token
//   SFT            chat conversations (options.sft_file, see train/sft_data.hpp) rendered through
//                  the starting model's chat template, one conversation per row of a batch
//                  (truncated to seq_len + 1 tokens, right-padded), loss on assistant tokens only:
//                  the mean cross-entropy over the trained targets of each micro-batch. Every
//                  `sft_validation_every`-th conversation is held out for the validation loss.
//                  Conversations are visited in a seeded shuffled order, epoch after epoch.
//
// Output directory:
//   log.csv, loss.svg                     one row per logged step; the curve of train/val loss
//   checkpoints/step-NNNNNNN/             model.safetensors, optimizer.safetensors, state.json
//                                         (step, tokens, the model description and the settings)
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
#include "train/sft_data.hpp"
#include "train/torch_model.hpp"
#include "util/dtype.hpp"

namespace crossmoe::train {

struct TrainOptions {
  std::filesystem::path data_dir;  // train.bin, val.bin, meta.json (from `crossmoe data prepare`)
  std::filesystem::path out_dir;
  std::filesystem::path init_model;  // start from these weights instead of a random init
  std::filesystem::path sft_file;    // SFT conversations (jsonl); needs init_model, ignores data_dir
  int sft_validation_every = 10;     // SFT: hold out every N-th conversation (0 = none)

  int64_t steps = 1000;
  int batch_size = 16;  // sequences per micro-batch
  int seq_len = 256;
  int grad_accum = 1;   // micro-batches per optimizer step
  double lr = 3e-3;
  double min_lr_ratio = 0.1;  // cosine decays to lr * min_lr_ratio
  int64_t warmup = 50;
  double weight_decay = 0.1;  // on matrices only, not norms or biases
  double beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  double grad_clip = 1.0;  // max global gradient norm; 0 = off
  double aux_loss_weight = 0.01;
  double bias_update_rate = 1e-3;  // aux-loss-free balancing for routers with correction biases
  double capacity_factor = 0.0;    // 0 = no cap (no token dropped)
  PsrSchedule psr;                 // ReXMoE progressive scaling routing (reuse layouts only)

  int64_t eval_every = 100;
  int eval_batches = 8;
  int64_t save_every = 500;
  int64_t log_every = 10;
  uint64_t seed = 0;
  std::string device = "cpu";  // "cpu" or "cuda"
  bool bf16 = false;           // bf16 matrix products (the default on CUDA)
  DType export_dtype = DType::BF16;
  bool resume = false;         // continue from the newest complete checkpoint when there is one
  bool force_settings = false; // resume even when training_settings differ from the checkpoint's
  int64_t stop_after = 0;      // > 0: checkpoint and stop after this step (no export), to split a run
};

struct TrainResult {
  int64_t steps = 0;
  double final_train_loss = 0, final_val_loss = 0;
  double tokens_per_second = 0;
  std::filesystem::path model_dir;
};

// Trains `config` (ignored when options.init_model or a resumed checkpoint gives the model).
TrainResult train_model(const ModelConfig& config, const TrainOptions& options);

// Every option in range (positive sizes and steps, rates in [0, 1), ...); a one-line error naming
// the `crossmoe train` flag otherwise. train_model checks this first.
void check_options(const TrainOptions& options);

// The options of a run, keyed by their `crossmoe train` flag names (without the dashes). Those
// that shape the trained weights must match on resume: data, init, sft, sft-validation-every,
// steps, batch, seq-len, accum, lr, min-lr-ratio, warmup, weight-decay, beta1, beta2, clip,
// aux-loss, bias-rate, capacity-factor, psr-start, psr-end, seed, bf16. The rest come back too but
// may change: eval-every, eval-batches, save-every, log-every, device, export-dtype. Paths are
// stored absolute.
nlohmann::json training_settings(const TrainOptions& options);
// `options` with the given settings applied (any subset of the keys above); a clear error for
// unknown keys or values of the wrong type (checkpoint files are untrusted input).
TrainOptions with_settings(TrainOptions options, const nlohmann::json& settings);
// The newest complete checkpoint of a run directory, as resuming would find it (nullopt: none).
// Its state.json is checked field by field: a corrupt one is an Error naming the file.
struct CheckpointInfo {
  std::filesystem::path dir;
  int64_t step = 0, tokens = 0;
  double elapsed_s = 0;
  ModelConfig config;
  nlohmann::json settings;  // training_settings; null in checkpoints written before they were stored
};
std::optional<CheckpointInfo> newest_checkpoint(const std::filesystem::path& out_dir);
// Where a run in out_dir starts: with `resume`, its newest complete checkpoint; nullopt for step 0.
// Refuses (Error) a directory that holds a run (a log or checkpoints) but offers no checkpoint to
// start from: it is never restarted over.
std::optional<CheckpointInfo> starting_checkpoint(const std::filesystem::path& out_dir, bool resume);
// Refuses (Error) to resume `checkpoint` with weight-shaping settings that differ from its own,
// naming each difference, unless options.force_settings; or when it already reached options.steps.
void check_resume(const TrainOptions& options, const CheckpointInfo& checkpoint);

// lr at a step: linear warmup from lr/warmup to lr, then cosine to lr * min_lr_ratio at `steps`.
double learning_rate(const TrainOptions& options, int64_t step);

// Next-token cross-entropy of logits [B, T, V] against targets [B, T]: the mean over all targets,
// or with a mask [B, T] (1 = counts), the mean over the targets the mask keeps.
torch::Tensor next_token_loss(const torch::Tensor& logits, const torch::Tensor& targets,
                              const torch::Tensor& mask = {});

// SFT rows: inputs, targets and the loss mask [B, T] (float, 1 = trained) of the given
// conversations, each cut to at most seq_len + 1 tokens, right-padded with token 0 (masked) to
// the longest row. T = the longest row's length - 1.
struct SftBatch {
  torch::Tensor input, target, mask;
};
SftBatch sft_batch(const std::vector<const SftExample*>& examples, int seq_len, torch::Device device);

// Mean next-token cross-entropy on the first `batches` x batch_size windows of `tokens`.
double evaluate_loss(const TorchModel& model, const std::vector<uint32_t>& tokens, int batches, int batch_size,
                     int seq_len, torch::ScalarType compute_dtype);
// SFT: mean cross-entropy over the trained targets of the first `batches` x batch_size
// conversations (each target weighs the same, whatever its conversation's length).
double evaluate_sft_loss(const TorchModel& model, const std::vector<SftExample>& examples, int batches, int batch_size,
                         int seq_len, torch::ScalarType compute_dtype);

// The loss curve as an SVG chart: train loss (every row) and validation loss (rows that have one)
// against tokens seen.
void write_loss_svg(const std::filesystem::path& csv, const std::filesystem::path& svg);

}  // namespace crossmoe::train
