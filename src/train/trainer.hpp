#pragma once
// The training loop: AdamW with warmup + cosine decay, gradient clipping and accumulation,
// load balancing (auxiliary loss, and the bias update for sigmoid routers), progressive scaling
// routing, validation perplexity, a CSV log and an SVG loss curve, atomic resumable checkpoints
// and export to a Hugging Face directory the runtime loads.
//
// Output directory:
//   log.csv, loss.svg                     one row per logged step; the curve of train/val loss
//   checkpoints/step-NNNNNNN/             model.safetensors, optimizer.safetensors, state.json
//   checkpoints/latest                    name of the newest complete checkpoint (renamed into place)
//   model/                                the exported model (config.json, generation_config.json, weights)
#include <cstdint>
#include <filesystem>
#include <string>

#include "model/config.hpp"
#include "train/torch_model.hpp"
#include "util/dtype.hpp"

namespace crossmoe::train {

struct TrainOptions {
  std::filesystem::path data_dir;  // train.bin, val.bin, meta.json (from `crossmoe data prepare`)
  std::filesystem::path out_dir;
  std::filesystem::path init_model;  // start from these weights instead of a random init

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
  bool resume = false;         // continue from checkpoints/latest when it exists
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

// lr at a step: linear warmup from lr/warmup to lr, then cosine to lr * min_lr_ratio at `steps`.
double learning_rate(const TrainOptions& options, int64_t step);

// Mean next-token cross-entropy on the first `batches` x batch_size windows of `tokens`.
double evaluate_loss(const TorchModel& model, const std::vector<uint32_t>& tokens, int batches, int batch_size,
                     int seq_len, torch::ScalarType compute_dtype);

// The loss curve as an SVG chart: train loss (every row) and validation loss (rows that have one)
// against tokens seen.
void write_loss_svg(const std::filesystem::path& csv, const std::filesystem::path& svg);

}  // namespace crossmoe::train
