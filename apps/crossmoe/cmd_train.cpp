// crossmoe train: pre-train a model of any layout on prepared token data (libtorch).
#include <omp.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "commands.hpp"
#include "model_options.hpp"
#include "model/hf_config.hpp"
#include "model/config.hpp"
#include "train/distributed.hpp"
#include "train/torch_model.hpp"
#include "train/trainer.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

namespace {

struct TrainArgs {
  train::TrainOptions options;
  ModelShapeArgs shape;
  std::string bf16 = "auto", export_dtype = "bf16", init, config;
  std::string psr_start = "0", psr_end = "0";  // a step or a percentage of --steps (train::schedule_step)
  int nproc = 1;  // processes (data-parallel ranks) on this host
  bool print_windows = false;
};

// --print-windows: where every window of the run starts in train.bin (a line per micro-batch), as
// the trainer's WindowSampler draws them, so that a peer implementation (bench/train_eager.py) can
// train on exactly the same data.
void print_windows(train::TrainOptions o) {
  namespace fs = std::filesystem;
  const fs::path train_bin = o.data_dir / "train.bin";
  require(!o.data_dir.empty() && fs::is_regular_file(train_bin), "--print-windows needs --data DIR with a train.bin");
  if (o.out_dir.empty()) o.out_dir = "unused";  // the other options' range checks, without a run directory
  train::check_options(o);
  train::WindowSampler sampler(o, int64_t(fs::file_size(train_bin) / sizeof(uint32_t)));
  for (int64_t i = 0; i < o.steps * o.grad_accum; ++i) {
    std::string line;
    for (const int64_t s : sampler.starts(uint64_t(i))) {
      if (!line.empty()) line += ' ';
      line += std::to_string(s);
    }
    std::printf("%s\n", line.c_str());
  }
}

// Options from a TOML/INI file, for every option not given on the command line. (CLI11 reads
// config files for the main app only, so a subcommand's --config is applied here.)
void apply_config_file(CLI::App& cmd, const std::string& path) {
  std::vector<CLI::ConfigItem> items;
  try {
    items = CLI::ConfigTOML().from_file(path);
  } catch (const CLI::ParseError& e) {
    throw Error("--config " + path + ": " + e.what());
  }
  for (const CLI::ConfigItem& item : items) {
    if (item.name == "++" || item.name == "--") continue;  // section markers
    require(item.parents.empty() || item.parents == std::vector<std::string>{"train"},
            "--config " + path + ": unknown section '" + item.fullname() + "'");
    CLI::Option* option = cmd.get_option_no_throw("--" + item.name);
    require(option != nullptr && item.name != "config",
            "--config " + path + ": '" + item.name + "' is not an option of `crossmoe train`");
    if (option->count() > 0) continue;  // the command line wins
    option->add_result(item.inputs);
    option->run_callback();
  }
}

// True when the user set this flag (on the command line or in the --config file).
bool given(const CLI::App& cmd, const std::string& flag) {
  const CLI::Option* option = cmd.get_option_no_throw(flag);
  return option && option->count() > 0;
}

void run_train(TrainArgs& a, CLI::App& cmd) {
  namespace fs = std::filesystem;
  train::TrainOptions& o = a.options;
  if (!a.config.empty()) apply_config_file(cmd, a.config);
  if (a.print_windows) return print_windows(o);
  if (o.out_dir.empty()) throw UsageError("--out DIR is required");
  o.init_model = a.init;
  o.bf16 = a.bf16 == "auto" ? o.device.rfind("cuda", 0) == 0 : a.bf16 == "on";
  require(parse_dtype(a.export_dtype == "f32" ? "F32" : a.export_dtype == "bf16" ? "BF16" : "?", &o.export_dtype),
          "--export-dtype must be f32 or bf16");
  require(o.peak_tflops >= 0, "--peak-tflops must be zero or more");
  // A launched rank skips this: the launcher checked before rank 0 began writing there.
  if (!train::launched_rank() && !o.resume && fs::exists(o.out_dir) && !fs::is_empty(o.out_dir))
    throw Error(o.out_dir.string() + " is not empty: pass --resume to continue that run, or choose another --out");

  // Resuming: every training setting not given again comes from the checkpoint (a setting given
  // with another value is refused by the trainer unless --force-settings), and the architecture
  // always does.
  const std::optional<train::CheckpointInfo> checkpoint = train::starting_checkpoint(o.out_dir, o.resume);
  if (checkpoint && !checkpoint->settings.is_null()) {
    nlohmann::json stored = nlohmann::json::object();
    for (const auto& [key, value] : checkpoint->settings.items())
      if (!given(cmd, "--" + key)) stored[key] = value;
    o = train::with_settings(o, stored);
    a.init = o.init_model.string();
  }
  if (o.sft_file.empty() && o.data_dir.empty())
    throw UsageError("--data DIR (pre-training) or --sft FILE (fine-tuning) is required");
  // Resolved against the run's --steps (given, or the checkpoint's); stored as steps.
  if (given(cmd, "--psr-start")) o.psr.start = train::schedule_step(a.psr_start, o.steps, "--psr-start");
  if (given(cmd, "--psr-end")) o.psr.end = train::schedule_step(a.psr_end, o.steps, "--psr-end");
  train::check_options(o);
  if (checkpoint) train::check_resume(o, *checkpoint);  // before any work or output
  if (o.tensor_parallel > 1)
    require(a.nproc % o.tensor_parallel == 0, "--tp " + std::to_string(o.tensor_parallel) +
                                                  " needs a --nproc that it divides (got --nproc " + std::to_string(a.nproc) + ")");
  if (o.expert_parallel > 1 && o.tensor_parallel == 1)
    require(a.nproc % o.expert_parallel == 0, "--ep " + std::to_string(o.expert_parallel) +
                                                  " needs a --nproc that it divides (got --nproc " + std::to_string(a.nproc) + ")");
  if (o.expert_parallel > 1 && o.tensor_parallel > 1)  // experts split among the ranks that hold the same slices
    require((a.nproc / o.tensor_parallel) % o.expert_parallel == 0,
            "--ep " + std::to_string(o.expert_parallel) + " must divide the " + std::to_string(a.nproc / o.tensor_parallel) +
                " tensor-parallel groups (--nproc " + std::to_string(a.nproc) + " / --tp " +
                std::to_string(o.tensor_parallel) + ")");
  // --nproc N starts N ranks, each on its device with that device's c10d backend (Gloo on the CPU,
  // NCCL on GPUs); --nproc 1 given explicitly too, so that one GPU runs the process-group path.
  const bool distributed = a.nproc > 1 || given(cmd, "--nproc");
  if (distributed) {
    const int groups = a.nproc / o.tensor_parallel;  // data-parallel: each takes its share of the batch
    require(o.batch_size % groups == 0,
            "--batch " + std::to_string(o.batch_size) + " must divide among the " + std::to_string(groups) +
                (o.tensor_parallel > 1 ? " tensor-parallel groups" : " --nproc processes") + " (it is the global batch)");
    const std::string nproc = "--nproc " + std::to_string(a.nproc);
    const torch::Device device(o.device);
    if (device.is_cuda()) {
      require(train::Communicator::available(device),
              nproc + " --device " + o.device + " needs c10d's NCCL backend, which this build lacks (a libtorch "
              "with CUDA and NCCL, probed when building: see docs/training.md)");
      require(a.nproc == 1 || !device.has_index(),
              nproc + " puts rank r on GPU r: give --device cuda, not --device " + o.device);
      const int last_gpu = train::Communicator::rank_device(device, a.nproc - 1).index();
      const int gpus = int(torch::cuda::device_count());
      require(last_gpu < gpus, nproc + " --device " + o.device + " needs GPU " + std::to_string(last_gpu) +
                                   " (one per process); this machine has " + std::to_string(gpus));
    } else {
      require(train::Communicator::available(device),
              nproc + " needs c10d's Gloo backend, which this build lacks (libtorch without Gloo's headers: "
              "install libgloo-dev and rebuild)");
    }
  }

  const bool sft = !o.sft_file.empty();
  std::string tokenizer;  // pre-training: the tokenizer of the data, shipped with the exported model
  if (!sft) {
    require(fs::exists(o.data_dir / "meta.json"),
            o.data_dir.string() + " has no meta.json: make it with `crossmoe data prepare --tokenizer T -o DIR`");
    const nlohmann::json meta = read_json_file(o.data_dir / "meta.json");
    require(meta.is_object() && meta.contains("tokenizer") && meta["tokenizer"].is_string(),
            (o.data_dir / "meta.json").string() + ": 'tokenizer' must be the path of a tokenizer.json");
    tokenizer = meta["tokenizer"].get<std::string>();
    require(fs::exists(tokenizer), "the tokenizer named in meta.json is missing: " + tokenizer);
  }
  const bool shape_given = !(a.shape == ModelShapeArgs{});
  ModelConfig config;
  if (checkpoint) {
    config = checkpoint->config;
    if (shape_given && a.init.empty())
      require(to_crossmoe_json(build_model_config(a.shape, tokenizer)) == to_crossmoe_json(config),
              "--resume: the model shape flags differ from the checkpoint's model; the architecture cannot change "
              "(drop the shape flags to continue)");
  } else {
    require(!(sft && a.init.empty()), "--sft needs --init MODEL: the model to fine-tune (with its chat template)");
    if (sft) train::ChatEncoder::load(a.init);  // a model without a chat template: an error before any work
    require(!(shape_given && !a.init.empty()), "--init takes the model's shape from MODEL: drop the shape flags");
    config = a.init.empty() ? build_model_config(a.shape, tokenizer) : read_model_config(a.init);
  }
  if (o.expert_parallel > 1) train::check_expert_parallel(config, o.expert_parallel);
  if (o.tensor_parallel > 1) train::check_tensor_parallel(config, o.tensor_parallel);
  const ParamCounts p = count_parameters(config);
  if (!train::launched_rank())  // the launcher said it already
    log_info("training " + config.model_type + " (" + (a.init.empty() ? a.shape.layout : a.init) + "): " +
           std::to_string(p.stored) + " parameters, " + std::to_string(p.active) + " active per token");
  // libtorch defaults to one thread per physical core; use what --threads (or OpenMP) says.
  at::set_num_threads(omp_get_max_threads());
  if (distributed && !train::launched_rank()) {
    const train::LaunchResult launched = train::launch_ranks(a.nproc);
    if (launched.failed_rank >= 0)
      throw Error("train --nproc: rank " + std::to_string(launched.failed_rank) + " of " + std::to_string(a.nproc) +
                  (launched.status > 128 ? " was killed by signal " + std::to_string(launched.status - 128)
                                         : " failed with exit code " + std::to_string(launched.status)) +
                  "; the other ranks were stopped");
    return;
  }
  train::TrainResult r;
  try {
    r = train::train_model(config, o);
  } catch (const c10::Error& e) {  // libtorch's message without its C++ backtrace
    throw Error(std::string("libtorch: ") + e.what_without_backtrace());
  }
  if (o.peak_tflops > 0 && !r.model_dir.empty())  // rank 0 (it exports) reports for all
    std::printf("crossmoe loss %.4f  %10.0f tokens/s  MFU %.1f%%\n", r.final_train_loss, r.tokens_per_second,
                100.0 * r.tokens_per_second * train::model_flops_per_token(config, o.seq_len) /
                    (a.nproc * o.peak_tflops * 1e12));
  if (r.model_dir.empty()) return;  // stopped early: nothing exported yet
  if (sft) {
    // The fine-tuned model speaks through the same tokenizer and chat template it learned.
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
      fs::copy_file(o.init_model / f, r.model_dir / f, fs::copy_options::overwrite_existing);
  } else {
    write_tokenizer_files(r.model_dir, tokenizer, config.max_position_embeddings);
  }
  std::printf("%s\n", r.model_dir.string().c_str());
}

}  // namespace

void add_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  train::TrainOptions& o = a->options;
  CLI::App* cmd = app.add_subcommand(
      "train", "Pre-train a model on token data from `crossmoe data prepare`, or fine-tune one on chat conversations (--sft)");
  cmd->add_option("--config", a->config,
                  "Read options from a TOML/INI file (keys are the long flag names; the command line wins)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--data", o.data_dir, "Directory with train.bin, val.bin and meta.json (pre-training)");
  cmd->add_option("--sft", o.sft_file,
                  "Fine-tune on chat conversations instead: a jsonl file of {\"messages\": [...]}, rendered through the "
                  "--init model's chat template, loss on assistant tokens only")
      ->check(CLI::ExistingFile);
  cmd->add_option("--sft-validation-every", o.sft_validation_every,
                  "SFT: hold out every N-th conversation for the validation loss (0 = none)")
      ->capture_default_str();
  cmd->add_option("-o,--out", o.out_dir, "Output directory (log, plot, checkpoints, model/); required");
  cmd->add_option("--init", a->init, "Start from this model directory instead of a random init (needed by --sft)")
      ->check(CLI::ExistingDirectory);
  add_model_shape_options(*cmd, a->shape);
  cmd->add_option("--steps", o.steps, "Optimizer steps")->capture_default_str();
  cmd->add_option("--batch", o.batch_size, "Sequences (SFT: conversations) per micro-batch")->capture_default_str();
  cmd->add_option("--seq-len", o.seq_len, "Tokens per sequence (SFT: longer conversations are cut)")->capture_default_str();
  cmd->add_option("--accum", o.grad_accum, "Micro-batches per step (gradient accumulation)")->capture_default_str();
  cmd->add_option("--data-order", o.data_order,
                  "Pre-training windows: random (uniform starts, with replacement) or epoch (the stream cut into "
                  "windows of --seq-len tokens, each read once per epoch in a seeded order)")
      ->capture_default_str();
  cmd->add_option("--lr", o.lr, "Peak learning rate")->capture_default_str();
  cmd->add_option("--min-lr-ratio", o.min_lr_ratio, "Cosine floor as a fraction of --lr")->capture_default_str();
  cmd->add_option("--warmup", o.warmup, "Linear warmup steps")->capture_default_str();
  cmd->add_option("--weight-decay", o.weight_decay, "AdamW weight decay (matrices only)")->capture_default_str();
  cmd->add_option("--beta1", o.beta1, "AdamW beta1")->capture_default_str();
  cmd->add_option("--beta2", o.beta2, "AdamW beta2")->capture_default_str();
  cmd->add_option("--clip", o.grad_clip, "Max gradient norm (0 = off)")->capture_default_str();
  cmd->add_option("--aux-loss", o.aux_loss_weight, "Load-balancing loss weight")->capture_default_str();
  cmd->add_option("--bias-rate", o.bias_update_rate, "Aux-loss-free bias update rate (sigmoid routers)")
      ->capture_default_str();
  cmd->add_option("--capacity-factor", o.capacity_factor, "Cap each expert's tokens (0 = no cap, nothing dropped)")
      ->capture_default_str();
  cmd->add_option("--psr-start", a->psr_start,
                  "ReXMoE progressive scaling routing: the step where the candidate pool starts to grow from E, "
                  "or a percentage of --steps (e.g. 10%)")
      ->capture_default_str();
  cmd->add_option("--psr-end", a->psr_end,
                  "The step where the pool reaches r*E, or a percentage of --steps (e.g. 50%); after --psr-start "
                  "(0 = PSR off)")
      ->capture_default_str();
  cmd->add_option("--psr-mask", o.psr_mask,
                  "PSR's random masks: one per layer and step for the whole batch (step), or one per token (token)")
      ->check(CLI::IsMember({"step", "token"}))
      ->capture_default_str();
  cmd->add_option("--expert-products", o.expert_products,
                  "How a training step runs the routed experts: grouped (grouped matrix products, no host sync: "
                  "libtorch 2.8 or later on CUDA, bf16), padded (batched products over rows padded to the busiest "
                  "expert), loop (one product per expert), dense (every expert on every token); auto = grouped where "
                  "it applies, else padded on CUDA and loop on the CPU")
      ->check(CLI::IsMember({"auto", "grouped", "padded", "loop", "dense"}))
      ->capture_default_str();
  cmd->add_option("--fused", o.fused,
                  "auto: libtorch's fused RMSNorm and AdamW kernels on CUDA where this build has them (libtorch 2.4 or "
                  "later); off: the composed kernels, the same functions to float rounding")
      ->check(CLI::IsMember({"auto", "off"}))
      ->capture_default_str();
  cmd->add_option("--eval-every", o.eval_every, "Validation every N steps")->capture_default_str();
  cmd->add_option("--eval-batches", o.eval_batches, "Validation batches (windows spread evenly over the held-out tokens)")->capture_default_str();
  cmd->add_option("--save-every", o.save_every, "Checkpoint every N steps (and at the end); each process writes its share, and it resumes on any --nproc, --tp, --ep")->capture_default_str();
  cmd->add_option("--log-every", o.log_every, "CSV row every N steps")->capture_default_str();
  cmd->add_option("--seed", o.seed, "Seed for the init, batches and PSR masks")->capture_default_str();
  cmd->add_option("--device", o.device, "cpu, cuda or cuda:N (with --nproc: cuda, rank r on GPU r)")->capture_default_str();
  cmd->add_option("--nproc", a->nproc,
                  "Data-parallel processes on this host, through c10d: Gloo on the CPU, NCCL with --device cuda "
                  "(one GPU each; --nproc 1 runs one through NCCL too). --batch is the global batch, split among "
                  "them; the log and model are the same as one process's")
      ->capture_default_str()->check(cli::positive());
  cmd->add_flag("--shard-optimizer", o.shard_optimizer,
                "With --nproc: ZeRO-1, each process keeps the AdamW moments of its share of the weights (1/N of "
                "the optimizer memory) and updates only those, then sends them to the others; same results");
  cmd->add_option("--ep", o.expert_parallel,
                  "Expert parallelism in groups of N of the --nproc processes (N divides --nproc): each holds 1/N of "
                  "the routed experts of every pool (a Megrez2 pool once, split; ReXMoE routers reach all ranks) and "
                  "tokens travel to their experts in the group and back by all-to-all; same results as one process")
      ->capture_default_str()->check(cli::positive());
  cmd->add_option("--tp", o.tensor_parallel,
                  "Tensor parallelism (Megatron style) in groups of N of the --nproc processes (N divides --nproc; "
                  "data parallel across the groups): attention heads split (N must divide --kv-heads), every FFN "
                  "(dense, shared and each routed expert) split along its width; with --ep E too, E divides the groups "
                  "and the experts are split among the ranks that hold the same slices; same results as one process")
      ->capture_default_str()->check(cli::positive());
  cmd->add_option("--bucket-mb", o.bucket_mb,
                  "With --nproc: gradients are averaged across processes in buckets of this many MiB, each "
                  "all-reduced as soon as the backward pass has finished its gradients (as PyTorch's DDP)")
      ->capture_default_str();
  cmd->add_option("--bf16", a->bf16, "bf16 matrix products: auto (on for cuda), on, off")
      ->capture_default_str()->check(CLI::IsMember({"auto", "on", "off"}));
  cmd->add_flag("--print-windows", a->print_windows,
                "Print where every window of the run (--data, --steps, --batch, --seq-len, --accum, --data-order, "
                "--seed) starts in train.bin, a line per micro-batch, and exit: the same data for a peer implementation");
  cmd->add_flag("--deterministic", o.deterministic,
                "Bitwise-repeatable runs: deterministic kernels only (CUDA: slower; an operation without one is an "
                "error), so that the same command gives the same loss curve");
  cmd->add_option("--export-dtype", a->export_dtype, "Dtype of the exported weights: bf16 or f32")->capture_default_str();
  cmd->add_option("--stop-after", o.stop_after, "Checkpoint and stop after this step (continue later with --resume)");
  cmd->add_option("--peak-tflops", o.peak_tflops, "One process's device peak TFLOP/s: model FLOPs utilisation in log.csv's mfu column and at the end");
  cmd->add_option("--profile", o.profile,
                  "Record 5 steps (the 11th to 15th of this run, or the last of a shorter one) with libtorch's "
                  "profiler and write where their time went to FILE: device kernels (CUDA) and host operators by "
                  "total time against the wall time; the timeline beside it as FILE.trace.json where libtorch has "
                  "Kineto (the first process only)");
  cmd->add_flag("--resume", o.resume,
                "Continue from the output directory's newest complete checkpoint; training settings not given "
                "come from it, and given ones must equal it");
  cmd->add_flag("--force-settings", o.force_settings,
                "With --resume: accept settings that differ from the checkpoint's (e.g. a larger --steps to train "
                "on; the cosine schedule then stretches to the new end)");
  add_threads_option(*cmd);
  cmd->callback([a, cmd] { run_train(*a, *cmd); });
}

}  // namespace crossmoe::cli
