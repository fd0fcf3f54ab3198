#pragma once
// The options of a training run (`crossmoe train`), torch-free so that the checks of settings
// read back from a checkpoint (untrusted files) run in the sanitized fuzz build too
// (tests/fuzz_checkpoint_state.cpp).
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "util/dtype.hpp"

namespace crossmoe::train {

// ReXMoE progressive scaling routing: the pool a router may choose from grows from E to r*E
// between steps start and end (the note's N_t); disabled when end <= start.
struct PsrSchedule {
  int64_t start = 0, end = 0;
  bool enabled() const { return end > start; }
};

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
  std::string data_order = "random";  // pre-training windows: "random" or "epoch" (WindowSampler)
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
  std::string psr_mask = "step";   // PSR's masks: one per layer and step ("step") or per token ("token")
  // How the training step runs the routed experts (GroupedExperts): auto, grouped, padded, loop, dense.
  std::string expert_products = "auto";
  // auto: libtorch's fused RMSNorm and AdamW kernels on CUDA where the build has them; off: the
  // composed kernels (ForwardOptions::fused_kernels, AdamW::fused), to measure what they save.
  std::string fused = "auto";

  int64_t eval_every = 100;
  int eval_batches = 8;
  int64_t save_every = 500;
  int64_t log_every = 10;
  uint64_t seed = 0;
  std::string device = "cpu";  // "cpu" or "cuda"
  bool bf16 = false;           // bf16 matrix products (the default on CUDA)
  bool deterministic = false;  // bitwise-repeatable kernels (use_deterministic_algorithms)
  DType export_dtype = DType::BF16;
  bool resume = false;         // continue from the newest complete checkpoint when there is one
  bool force_settings = false; // resume even when training_settings differ from the checkpoint's
  int64_t stop_after = 0;      // > 0: checkpoint and stop after this step (no export), to split a run
  double peak_tflops = 0;        // one process's device peak TFLOP/s: log.csv's mfu (0 = unknown, no mfu)
  std::filesystem::path profile;  // non-empty: where a few steps' time went (StepProfiler), written by rank 0
  bool shard_optimizer = false;  // several processes: ZeRO-1, each keeps the AdamW moments of 1/N of the weights
  int expert_parallel = 1;        // --ep: the routed experts split across this many processes (= --nproc)
  int tensor_parallel = 1;        // --tp: attention and FFN matrices split across groups of this many processes
  double bucket_mb = 25;          // several processes: gradients are all-reduced in buckets of this many MiB
};

// Every option in range (positive sizes and steps, rates in [0, 1), ...); a one-line error naming
// the `crossmoe train` flag otherwise. train_model checks this first.
void check_options(const TrainOptions& options);

// A step of a schedule given on the command line (--psr-start, --psr-end): a step count ("400")
// or a percentage of the run's `steps` ("10%", "2.5%"), rounded to the nearest step. A UsageError
// naming `flag` for anything else, a negative value or more than 100%.
int64_t schedule_step(const std::string& text, int64_t steps, const std::string& flag);

// The options of a run, keyed by their `crossmoe train` flag names (without the dashes). Those
// that shape the trained weights must match on resume: data, init, sft, sft-validation-every,
// steps, batch, seq-len, accum, data-order, lr, min-lr-ratio, warmup, weight-decay, beta1, beta2, clip,
// aux-loss, bias-rate, capacity-factor, psr-start, psr-end, seed, bf16. The rest (free_setting)
// come back too but may change: eval-every, eval-batches, save-every, log-every, device,
// export-dtype, deterministic. Paths are stored absolute.
nlohmann::json training_settings(const TrainOptions& options);
bool free_setting(const std::string& key);
// `options` with the given settings applied (any subset of the keys above); a clear error for
// unknown keys or values of the wrong type (checkpoint files are untrusted input).
TrainOptions with_settings(TrainOptions options, const nlohmann::json& settings);

}  // namespace crossmoe::train
