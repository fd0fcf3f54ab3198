#include "train/trainer.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <sstream>

#include "model/hf_config.hpp"
#include "model/tensor_names.hpp"
#include "train/corpus.hpp"
#include "train/distributed.hpp"
#include "train/optimizer.hpp"
#include "train/step_profiler.hpp"
#include "util/error.hpp"
#include "util/csv.hpp"
#include "util/json_file.hpp"
#include "util/progress.hpp"
#include "util/svg_plot.hpp"

namespace crossmoe::train {

namespace fs = std::filesystem;

double learning_rate(const TrainOptions& o, int64_t step) {
  if (step < o.warmup) return o.lr * double(step + 1) / double(o.warmup);
  const double span = double(std::max<int64_t>(o.steps - o.warmup, 1));
  const double progress = std::clamp(double(step - o.warmup) / span, 0.0, 1.0);
  const double min_lr = o.lr * o.min_lr_ratio;
  return min_lr + 0.5 * (o.lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

torch::Tensor next_token_loss(const torch::Tensor& logits, const torch::Tensor& targets, const torch::Tensor& mask) {
  namespace F = torch::nn::functional;
  const torch::Tensor flat_logits = logits.reshape({-1, logits.size(-1)}), flat_targets = targets.reshape(-1);
  if (!mask.defined()) return F::cross_entropy(flat_logits, flat_targets);
  const torch::Tensor each = F::cross_entropy(flat_logits, flat_targets, F::CrossEntropyFuncOptions().reduction(torch::kNone));
  const torch::Tensor keep = mask.reshape(-1).to(each.scalar_type());
  return (each * keep).sum() / keep.sum().clamp_min(1.0);
}

SftBatch sft_batch(const std::vector<const SftExample*>& examples, int seq_len, torch::Device device,
                   const std::vector<const SftExample*>& pad_like) {
  require(!examples.empty() && seq_len > 0, "sft_batch: no conversations");
  int64_t longest = 2;
  for (const auto* some : {&examples, &pad_like})
    for (const SftExample* e : *some)
      longest = std::max<int64_t>(longest, std::min<int64_t>(int64_t(e->tokens.size()), seq_len + 1));
  const int64_t B = int64_t(examples.size()), T = longest - 1;
  torch::Tensor tokens = torch::zeros({B, T + 1}, torch::kInt64), trained = torch::zeros({B, T + 1}, torch::kFloat32);
  int64_t* tp = tokens.data_ptr<int64_t>();
  float* mp = trained.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    const SftExample& e = *examples[size_t(b)];
    const int64_t n = std::min<int64_t>(int64_t(e.tokens.size()), T + 1);
    for (int64_t t = 0; t < n; ++t) tp[b * (T + 1) + t] = e.tokens[size_t(t)], mp[b * (T + 1) + t] = e.trained[size_t(t)];
  }
  tokens = tokens.to(device);
  trained = trained.to(device);
  return {tokens.narrow(1, 0, T), tokens.narrow(1, 1, T), trained.narrow(1, 1, T)};
}

namespace {

enum Stream : uint64_t { kBatches = 1, kPsrMasks = 2, kSftOrder = 3, kWindowOrder = 4, kPsrTokenMasks = 5 };

// Input and target windows [B, T] starting at the given offsets.
std::pair<torch::Tensor, torch::Tensor> windows(const std::vector<uint32_t>& tokens, const std::vector<int64_t>& starts,
                                                int seq_len, torch::Device device) {
  const int64_t B = int64_t(starts.size());
  torch::Tensor buf = torch::empty({B, seq_len + 1}, torch::kInt64);
  int64_t* p = buf.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int t = 0; t <= seq_len; ++t) p[b * (seq_len + 1) + t] = tokens[size_t(starts[size_t(b)] + t)];
  buf = buf.to(device);
  return {buf.narrow(1, 0, seq_len), buf.narrow(1, 1, seq_len)};
}

// One random set of `pool` open candidates out of C, as a bool mask [C].
torch::Tensor open_candidates(int C, int pool, std::mt19937_64& rng) {
  std::vector<int> order(static_cast<size_t>(C));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  torch::Tensor mask = torch::zeros({C}, torch::kBool);
  for (int i = C - pool; i < C; ++i) mask[order[size_t(i)]] = true;
  return mask;
}

// Per MoE layer of a reuse layout with PSR on: the candidates its router may pick in this
// micro-batch. --psr-mask step: one mask [C] per layer for the whole step (the note's N_t, as
// specified). token: a mask per token [tokens, C], each token's drawn from a bank of
// kTokenMaskBank random masks per layer and step, so that every batch still reaches every
// candidate. Token masks are drawn for the global micro-batch and this rank takes its rows, so
// data parallelism sees the masks one process would.
constexpr int kTokenMaskBank = 256;
GroupedExperts expert_products(const std::string& name) {
  if (name == "grouped") return GroupedExperts::GroupedMM;
  if (name == "padded") return GroupedExperts::On;
  if (name == "loop") return GroupedExperts::Off;
  if (name == "dense") return GroupedExperts::Dense;
  return GroupedExperts::Auto;
}

std::vector<torch::Tensor> psr_masks(const ModelConfig& c, const TrainOptions& o, int64_t step, int micro, int rank,
                                     int local_rows, const torch::Device& device) {
  std::vector<torch::Tensor> allowed(static_cast<size_t>(c.num_layers));
  if (!o.psr.enabled() || c.moe.cross_layer != CrossLayer::Reuse) return allowed;
  const bool per_token = o.psr_mask == "token";
  torch::Tensor bank_index;  // per token of this rank's rows: which of the bank's masks
  for (int l = 0; l < c.num_layers; ++l) {
    if (!c.layers[l].is_moe) continue;
    const int C = c.num_candidates(l), E = c.moe.num_experts;
    const int pool = psr_pool_size(E, C / E, step, o.psr);
    if (pool >= C) continue;
    const uint64_t micro_step = uint64_t(step) * uint64_t(o.grad_accum) + uint64_t(micro);
    if (!per_token) {
      auto rng = stream_rng(o.seed, kPsrMasks, uint64_t(step) * 4096 + uint64_t(l));
      allowed[size_t(l)] = open_candidates(C, pool, rng).to(device);
      continue;
    }
    if (!bank_index.defined()) {
      auto rng = stream_rng(o.seed, kPsrTokenMasks, micro_step * 4096);
      const int64_t tokens = int64_t(o.batch_size) * o.seq_len, first = int64_t(rank) * local_rows * o.seq_len;
      std::vector<int64_t> index(static_cast<size_t>(tokens));
      for (int64_t& i : index) i = int64_t(rng() % kTokenMaskBank);
      bank_index = torch::tensor(std::vector<int64_t>(index.begin() + first, index.begin() + first + int64_t(local_rows) * o.seq_len))
                       .to(device);
    }
    auto rng = stream_rng(o.seed, kPsrTokenMasks, micro_step * 4096 + 1 + uint64_t(l));
    std::vector<torch::Tensor> bank;
    for (int b = 0; b < kTokenMaskBank; ++b) bank.push_back(open_candidates(C, pool, rng));
    allowed[size_t(l)] = torch::stack(bank).to(device).index_select(0, bank_index);
  }
  return allowed;
}

struct LogRow {
  int64_t step = 0, tokens = 0;
  double lr = 0, loss = 0, aux = 0, grad_norm = 0, tokens_per_s = 0, elapsed = 0;
  double communication_s = 0;  // rank 0's seconds in collectives since the previous row (0 on one process)
  double tokens_per_s_per_rank = 0;  // tokens_per_s / processes: what each process (device) contributes
  std::optional<double> mfu;    // model FLOPs utilisation of all ranks' devices (with --peak-tflops)
  std::optional<double> val_loss;
};
constexpr const char* kCsvHeader =
    "step,tokens,lr,loss,aux_loss,grad_norm,val_loss,val_ppl,tokens_per_s,comm_s,mfu,elapsed_s,tokens_per_s_per_rank";
// Runs before tokens_per_s_per_rank was added wrote these: they resume with it empty in the earlier rows.
constexpr const char* kEarlierCsvHeader = "step,tokens,lr,loss,aux_loss,grad_norm,val_loss,val_ppl,tokens_per_s,comm_s,mfu,elapsed_s";

void append_csv(const fs::path& path, const LogRow& r) {
  std::ofstream out(path, std::ios::app);
  char buf[512];
  std::snprintf(buf, sizeof buf, "%lld,%lld,%.6g,%.6f,%.6f,%.4f,", (long long)r.step, (long long)r.tokens, r.lr, r.loss,
                r.aux, r.grad_norm);
  out << buf;
  if (r.val_loss) {
    std::snprintf(buf, sizeof buf, "%.6f,%.4f", *r.val_loss, std::exp(*r.val_loss));
    out << buf;
  } else {
    out << ",";
  }
  std::snprintf(buf, sizeof buf, ",%.1f,%.3f,", r.tokens_per_s, r.communication_s);
  out << buf;
  if (r.mfu) {
    std::snprintf(buf, sizeof buf, "%.6g", *r.mfu);
    out << buf;
  }
  std::snprintf(buf, sizeof buf, ",%.1f,%.1f\n", r.elapsed, r.tokens_per_s_per_rank);
  out << buf;
  require(out.good(), "cannot write " + path.string());
}

void require_ids_below(const std::vector<uint32_t>& tokens, int vocab, const std::string& what) {
  const auto top = std::max_element(tokens.begin(), tokens.end());
  require(top == tokens.end() || int64_t(*top) < vocab, what + " has token id " + std::to_string(top == tokens.end() ? 0 : *top) +
                                                            ", outside the model's vocabulary of " + std::to_string(vocab));
}

}  // namespace

EpochOrder::EpochOrder(uint64_t seed, uint64_t stream, size_t count) : seed_(seed), stream_(stream), count_(count) {}

size_t EpochOrder::at(uint64_t position) {
  const uint64_t epoch = position / count_;
  if (epoch != epoch_ || order_.empty()) {
    order_.resize(count_);
    std::iota(order_.begin(), order_.end(), size_t(0));
    auto rng = stream_rng(seed_, stream_, epoch);
    std::shuffle(order_.begin(), order_.end(), rng);
    epoch_ = epoch;
  }
  return order_[size_t(position % count_)];
}

WindowSampler::WindowSampler(const TrainOptions& o, int64_t tokens)
    : epoch_(o.data_order == "epoch"),
      seed_(o.seed),
      batch_(o.batch_size),
      seq_len_(o.seq_len),
      windows_((tokens - 1) / o.seq_len),
      max_start_(tokens - o.seq_len - 1),
      order_(o.seed, kWindowOrder, size_t(std::max<int64_t>(windows_, 1))) {
  require(windows_ > 0 && max_start_ >= 0, "the training stream is shorter than one sequence of --seq-len + 1 tokens");
}

std::vector<int64_t> WindowSampler::starts(uint64_t index) {
  std::vector<int64_t> out(static_cast<size_t>(batch_));
  if (epoch_) {
    for (int b = 0; b < batch_; ++b) out[size_t(b)] = int64_t(order_.at(index * uint64_t(batch_) + uint64_t(b))) * seq_len_;
    return out;
  }
  auto rng = stream_rng(seed_, kBatches, index);
  std::uniform_int_distribution<int64_t> pick(0, max_start_);
  for (auto& s : out) s = pick(rng);
  return out;
}

double evaluate_loss(const TorchModel& model, const std::vector<uint32_t>& tokens, int batches, int batch_size, int seq_len,
                     torch::ScalarType compute_dtype, const ExpertParallel& experts, const TensorParallel& tensors) {
  torch::NoGradGuard no_grad;
  const int64_t available = (int64_t(tokens.size()) - 1) / seq_len;
  require(available > 0, "validation data is shorter than one sequence of " + std::to_string(seq_len) + " tokens");
  const int64_t windows_total = std::min<int64_t>(available, int64_t(batches) * batch_size);
  double sum = 0;
  int64_t count = 0;
  for (int64_t first = 0; first < windows_total; first += batch_size) {
    std::vector<int64_t> starts;
    // Windows spread evenly over the held-out tokens: they are held-out documents in corpus order,
    // so the first windows alone would measure the first sources only.
    for (int64_t w = first; w < std::min<int64_t>(windows_total, first + batch_size); ++w)
      starts.push_back(w * available / windows_total * seq_len);
    auto [in, target] = windows(tokens, starts, seq_len, model.device());
    ForwardOptions fo;
    fo.compute_dtype = compute_dtype;
    fo.expert_parallel = experts;
    fo.tensor_parallel = tensors;
    sum += next_token_loss(model.forward(in, fo).logits, target).item<double>() * double(starts.size());
    count += int64_t(starts.size());
  }
  return sum / double(count);
}

double evaluate_sft_loss(const TorchModel& model, const std::vector<SftExample>& examples, int batches, int batch_size,
                         int seq_len, torch::ScalarType compute_dtype, const ExpertParallel& experts,
                         const TensorParallel& tensors) {
  torch::NoGradGuard no_grad;
  require(!examples.empty(), "no SFT conversations to evaluate");
  const size_t total = std::min(examples.size(), size_t(batches) * size_t(batch_size));
  double sum = 0, count = 0;
  for (size_t first = 0; first < total; first += size_t(batch_size)) {
    std::vector<const SftExample*> rows;
    for (size_t i = first; i < std::min(total, first + size_t(batch_size)); ++i) rows.push_back(&examples[i]);
    const SftBatch batch = sft_batch(rows, seq_len, model.device());
    ForwardOptions fo;
    fo.compute_dtype = compute_dtype;
    fo.expert_parallel = experts;
    fo.tensor_parallel = tensors;
    const double trained = batch.mask.sum().item<double>();
    sum += next_token_loss(model.forward(batch.input, fo).logits, batch.target, batch.mask).item<double>() * trained;
    count += trained;
  }
  require(count > 0, "the SFT validation conversations have no assistant token within --seq-len");
  return sum / count;
}

void use_deterministic_algorithms() {
  setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
  at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/false);
  at::globalContext().setDeterministicCuDNN(true);
  at::globalContext().setBenchmarkCuDNN(false);
}

TrainResult train_model(const ModelConfig& requested, const TrainOptions& o) {
  check_options(o);
  if (o.deterministic) use_deterministic_algorithms();
  if (torch::Device(o.device).is_cuda())
    require(torch::cuda::is_available(), "train: --device cuda but no CUDA device is available");
  const torch::ScalarType compute = o.bf16 ? torch::kBFloat16 : torch::kFloat32;
  const fs::path csv = o.out_dir / "log.csv";
  // Data parallelism (train/distributed): every rank takes its slice of each global batch; rank 0
  // (the leader) alone writes the log, checkpoints and the model. A rank trains on its own device
  // (with --device cuda, GPU number rank), where its collectives run too.
  const std::unique_ptr<Communicator> comm = Communicator::from_environment(torch::Device(o.device));
  const torch::Device device = comm ? comm->device() : torch::Device(o.device);
  const int world = comm ? comm->world() : 1, rank = comm ? comm->rank() : 0;
  const bool leader = rank == 0;
  // Tensor parallelism: groups of `tp` consecutive ranks hold the slices of one model and see the
  // same rows; data parallelism runs across the groups (`data_ranks` of them), among the ranks that
  // hold the same slices (`data_comm`: the whole world without tensor parallelism).
  const int tp = o.tensor_parallel;
  require(world % tp == 0, "--tp " + std::to_string(tp) + " must divide the " + std::to_string(world) +
                               " processes (--nproc)");
  const int data_ranks = world / tp, data_rank = rank / tp, tp_rank = rank % tp;
  std::unique_ptr<Communicator> tp_comm, data_group;
  Communicator* data_comm = comm.get();
  if (tp > 1) {
    std::vector<int> tp_members, data_members;
    for (int i = 0; i < tp; ++i) tp_members.push_back(data_rank * tp + i);
    for (int g = 0; g < data_ranks; ++g) data_members.push_back(g * tp + tp_rank);
    tp_comm = comm->subgroup(tp_members, "tp" + std::to_string(data_rank));
    data_group = comm->subgroup(data_members, "data" + std::to_string(tp_rank));
    data_comm = data_group.get();
  }
  require(o.batch_size % data_ranks == 0, "--batch " + std::to_string(o.batch_size) + " must divide among the " +
                                              std::to_string(data_ranks) + " data-parallel groups (it is the global batch)");
  const std::optional<CheckpointInfo> resumed = starting_checkpoint(o.out_dir, o.resume);
  if (resumed) check_resume(o, *resumed);
  if (comm) comm->barrier();  // every rank has looked at the output directory before rank 0 writes there

  // The data: token windows, or SFT conversations rendered through the starting model's template.
  const bool sft = !o.sft_file.empty();
  std::vector<uint32_t> train_tokens, val_tokens;
  std::vector<SftExample> sft_train, sft_val;
  int data_vocab = 0;
  if (sft) {
    require(!o.init_model.empty(), "--sft needs --init MODEL: the model to fine-tune, with its chat template");
    ChatEncoder encoder = ChatEncoder::load(o.init_model);
    std::vector<SftExample> all = read_sft_file(o.sft_file, encoder);
    for (size_t i = 0; i < all.size(); ++i) {
      const bool held_out = o.sft_validation_every > 0 && (i + 1) % size_t(o.sft_validation_every) == 0;
      (held_out ? sft_val : sft_train).push_back(std::move(all[i]));
    }
    require(!sft_train.empty(), o.sft_file.string() + ": no conversations left for training after holding out every " +
                                    std::to_string(o.sft_validation_every) + "-th");
    size_t cut = 0;
    for (const auto& e : sft_train) cut += e.tokens.size() > size_t(o.seq_len) + 1;
    if (cut > 0)
      log_info(std::to_string(cut) + " of " + std::to_string(sft_train.size()) + " training conversations are longer than " +
               std::to_string(o.seq_len + 1) + " tokens and are cut (raise --seq-len to keep them whole)");
    data_vocab = encoder.tokenizer.vocab_size();
  } else {
    train_tokens = read_tokens(o.data_dir / "train.bin");
    val_tokens = read_tokens(o.data_dir / "val.bin");
    require(int64_t(train_tokens.size()) > o.seq_len + 1,
            (o.data_dir / "train.bin").string() + " is shorter than one sequence of --seq-len + 1 tokens");
    require(int64_t(val_tokens.size()) > o.seq_len,
            (o.data_dir / "val.bin").string() + " is shorter than one sequence of --seq-len + 1 tokens");
    const nlohmann::json meta = read_json_file(o.data_dir / "meta.json");
    require(meta.is_object() && meta.contains("vocab_size") && meta["vocab_size"].is_number_integer(),
            (o.data_dir / "meta.json").string() + ": 'vocab_size' must be an integer");
    data_vocab = meta["vocab_size"].get<int>();
  }
  fs::create_directories(o.out_dir);

  // The model: a resumed checkpoint, given weights, or a fresh init.
  std::optional<TorchModel> model;
  AdamW adam;
  int64_t start_step = 0, tokens_seen = 0;
  double elapsed_before = 0;
  if (resumed) {
    model.emplace(resumed->config, 0, device);
    load_checkpoint_tensors(resumed->dir, *model, adam);
    start_step = resumed->step;
    tokens_seen = resumed->tokens;
    elapsed_before = resumed->elapsed_s;
    log_info("resuming from " + resumed->dir.string() + " at step " + std::to_string(start_step));
  } else if (!o.init_model.empty()) {
    model.emplace(TorchModel::load(o.init_model, device));
  } else {
    model.emplace(requested, o.seed, device);
  }
  const ModelConfig& config = model->config();
  // Expert parallelism: each rank keeps its share of the routed experts (and their moments); the
  // model was made or loaded whole, so that every layout of a checkpoint loads the same way.
  // The experts are split among the data-parallel ranks (`data_comm`: all of them, or with tensor
  // parallelism those that hold the same slices, each expert then sliced by its group as well). With
  // fewer than all of them (--ep below the data-parallel count), groups of `ep` consecutive ones split
  // the experts (`ep_comm`), and the ranks that hold the same experts in each group (i, i + ep, ...:
  // `expert_data_comm`) average those experts' gradients.
  const int ep = o.expert_parallel, ep_rank = data_rank % ep;
  std::vector<std::string> others_experts, own_experts;
  std::unique_ptr<Communicator> ep_group, expert_data_comm;
  Communicator* ep_comm = data_comm;
  if (ep > 1) {
    require(comm && data_ranks % ep == 0, "--ep " + std::to_string(ep) + " must divide the " + std::to_string(data_ranks) +
                                              (tp > 1 ? " tensor-parallel groups" : " processes (--nproc)"));
    check_expert_parallel(config, ep);
    if (ep < data_ranks) {
      std::vector<int> ep_members, expert_data_members;
      for (int i = 0; i < ep; ++i) ep_members.push_back(data_rank / ep * ep + i);
      for (int g = 0; g < data_ranks / ep; ++g) expert_data_members.push_back(g * ep + ep_rank);
      ep_group = data_comm->subgroup(ep_members, "ep" + std::to_string(data_rank / ep));
      expert_data_comm = data_comm->subgroup(expert_data_members, "experts" + std::to_string(ep_rank));
      ep_comm = ep_group.get();
    }
    for (const auto& [name, r] : expert_tensor_ranks(config, ep)) (r == ep_rank ? own_experts : others_experts).push_back(name);
    model->drop_tensors(others_experts);
    for (const std::string& name : others_experts) adam.m.erase(name), adam.v.erase(name);
  }
  // Tensor parallelism: likewise, each rank keeps its slices of the split tensors and their moments.
  const std::map<std::string, int> tp_splits = tp > 1 ? tensor_parallel_splits(config) : std::map<std::string, int>{};
  std::vector<std::string> tp_sliced;
  if (tp > 1) {
    check_tensor_parallel(config, tp);
    model->keep_tensor_parallel_slices(tp_rank, tp);
    for (const auto& [name, dim] : tp_splits) {
      if (!model->tensors().count(name)) continue;  // another rank's expert
      tp_sliced.push_back(name);
      for (auto* moments : {&adam.m, &adam.v})
        if (moments->count(name)) (*moments)[name] = tensor_parallel_slice(moments->at(name), dim, tp_rank, tp);
    }
  }
  require(data_vocab <= config.vocab_size, "the model's vocabulary (" + std::to_string(config.vocab_size) +
                                               ") is smaller than the tokenizer's (" + std::to_string(data_vocab) + ")");
  require_ids_below(train_tokens, config.vocab_size, (o.data_dir / "train.bin").string());
  require_ids_below(val_tokens, config.vocab_size, (o.data_dir / "val.bin").string());
  if (leader) keep_log_rows(csv, kCsvHeader, start_step, kEarlierCsvHeader);
  const nlohmann::json settings = training_settings(o);

  const std::vector<std::string> trainable = model->trainable_names();
  for (const auto& name : trainable) model->tensor(name).set_requires_grad(true);
  // ZeRO-1: this rank keeps the AdamW moments of its share of the parameters and updates only those;
  // a checkpoint holds every rank's share and resuming puts them together, so that it resumes on any
  // number of ranks. Under expert parallelism the routed experts are split already: their moments
  // stay with them, and ZeRO shards those of the rest (`replicated`: every data-parallel rank holds them).
  const std::set<std::string> own(own_experts.begin(), own_experts.end());
  std::vector<std::string> replicated;
  for (const std::string& name : trainable)
    if (!own.count(name)) replicated.push_back(name);
  const bool sharded = comm && o.shard_optimizer;
  std::vector<torch::Tensor> parameters;
  for (const auto& name : replicated) parameters.push_back(model->tensor(name));
  const int data_comm_rank = comm ? data_comm->rank() : 0;
  const std::vector<int> owner =
      sharded ? data_comm->owners(parameters) : std::vector<int>(replicated.size(), data_comm_rank);
  std::vector<std::string> updated = own_experts;
  for (size_t i = 0; i < replicated.size(); ++i)
    if (owner[i] == data_comm_rank) updated.push_back(replicated[i]);
    else adam.m.erase(replicated[i]), adam.v.erase(replicated[i]);
  // Data parallel: gradients averaged in buckets while the backward pass runs.
  // Under expert parallelism the experts' gradients stay on their rank (every rank of its group's
  // tokens already reached them through the all-to-all): the rest is averaged, and with several
  // expert-parallel groups the experts' among the ranks that hold them (expert_reducer).
  std::unique_ptr<GradientReducer> reducer, expert_reducer;
  if (expert_data_comm)
    expert_reducer = std::make_unique<GradientReducer>(*expert_data_comm, *model, own_experts, int64_t(o.bucket_mb * (1 << 20)));
  if (comm) {
    reducer = std::make_unique<GradientReducer>(*data_comm, *model, replicated, int64_t(o.bucket_mb * (1 << 20)));
    if (leader)
      log_info("data parallel on " + std::to_string(data_ranks) + (tp > 1 ? " group" : " process") +
               (data_ranks > 1 ? "s" : "") + " (" + (device.is_cuda() ? "NCCL" : "Gloo") + ")" +
               ": gradients in " + std::to_string(reducer->buckets()) + " buckets, all-reduced during the backward pass");
    if (leader && tp > 1)
      log_info("tensor parallel: " + std::to_string(data_ranks) + " group" + (data_ranks > 1 ? "s" : "") + " of " +
               std::to_string(tp) + " processes, each holding 1/" + std::to_string(tp) +
               " of every attention and FFN matrix (heads and FFN widths split)");
    if (leader && ep > 1)
      log_info("expert parallel: each process holds " + std::to_string(config.moe.num_experts / ep) + " of the " +
               std::to_string(config.moe.num_experts) + " routed experts of every pool" +
               (ep < data_ranks ? " (" + std::to_string(data_ranks / ep) + " groups of " + std::to_string(ep) + " processes)" : "") +
               (tp > 1 ? ", sliced by its tensor-parallel group" : "") + "; tokens travel by all-to-all");
  }
  // Sums over the data-parallel ranks (the balancing statistics, losses, expert loads), and over a
  // tensor-parallel group (the split gradients' squares for the norm).
  std::function<void(torch::Tensor&)> sum_over_ranks, sum_over_tp, sum_over_ep;
  ExpertParallel expert_parallel;
  TensorParallel tensor_parallel;
  auto summing_over = [](Communicator* group) {
    return [group](torch::Tensor& t) {
      std::vector<torch::Tensor> one{t.contiguous()};
      group->sum(one);
      t = one[0];
    };
  };
  if (tp > 1) {
    sum_over_tp = summing_over(tp_comm.get());
    tensor_parallel = {tp_rank, tp, [&tp_comm](const torch::Tensor& x) { return tp_comm->enter_split(x); },
                       [&tp_comm](const torch::Tensor& x) { return tp_comm->reduce_split(x); }};
  }
  if (comm) {
    sum_over_ranks = summing_over(data_comm);
    if (ep > 1) {
      sum_over_ep = summing_over(ep_comm);
      expert_parallel = {ep_rank, ep, sum_over_ep,
                         [ep_comm](const torch::Tensor& rows, const std::vector<int64_t>& send, const std::vector<int64_t>& recv) {
                           return ep_comm->exchange_rows(rows, send, recv);
                         }};
    }
  }
  // The gradients that ranks hold shares of, for the clipping norm: their experts (sliced too under
  // tensor parallelism) and their slices of the rest.
  std::vector<SplitGradients> split_gradients;
  if (ep > 1)
    split_gradients.push_back({own_experts, [&](torch::Tensor& t) {
                                 sum_over_ep(t);
                                 if (tp > 1) sum_over_tp(t);
                               }});
  if (tp > 1) {
    const std::set<std::string> experts(own_experts.begin(), own_experts.end());
    std::vector<std::string> slices;
    for (const std::string& name : tp_sliced)
      if (!experts.count(name)) slices.push_back(name);
    split_gradients.push_back({slices, sum_over_tp});
  }
  // For the export, rank 0 takes every expert's weights from their ranks in its group (the other
  // groups hold the same). (Under tensor parallelism, every rank of rank 0's group does this for its
  // slices of the experts with the ranks that hold the same slices; `me` is the rank in that
  // expert-parallel group.)
  const int me = data_rank;
  auto gather_experts = [&] {
    if (me >= ep) return;
    std::map<std::string, std::vector<int64_t>> shapes;
    for (const TensorSpec& spec : expected_tensors(config)) shapes[spec.name] = spec.shape;
    for (const auto& [name, dim] : tp_splits) shapes.at(name)[size_t(dim)] /= tp;
    std::vector<torch::Tensor> tensors;
    std::vector<int> owners;
    std::map<std::string, torch::Tensor> weights;
    for (const auto& [name, r] : expert_tensor_ranks(config, ep)) {
      if (r == 0 || (me != 0 && me != r)) continue;
      tensors.push_back(me == 0 ? weights[name] = torch::zeros(shapes.at(name), torch::TensorOptions().device(device))
                                : model->tensor(name));
      owners.push_back(r);
    }
    ep_comm->gather_to_leader(tensors, owners);
    if (me == 0) model->add_tensors(weights);
  };
  // Then, under tensor parallelism, rank 0 takes the whole of every split tensor from the other ranks
  // of its group, in place of its slices (training is over); the other groups hold the same slices
  // and stay out.
  auto gather_slices = [&] {
    if (rank >= tp) return;
    std::vector<torch::Tensor> tensors;
    std::vector<int> owners;
    std::map<std::string, std::vector<torch::Tensor>> pieces;  // name -> the slices in rank order
    for (const auto& [name, dim] : tp_splits) {
      const torch::Tensor& held = model->tensor(name);
      std::vector<torch::Tensor>& slices = pieces[name];
      slices.push_back(held);
      for (int r = 1; r < tp; ++r) {
        slices.push_back(rank == 0 ? torch::empty_like(held) : held);
        tensors.push_back(slices.back());
        owners.push_back(r);
      }
    }
    tp_comm->gather_to_leader(tensors, owners);
    if (rank != 0) return;
    std::map<std::string, torch::Tensor> whole;
    for (const auto& [name, dim] : tp_splits) whole[name] = torch::cat(pieces.at(name), dim).detach();
    model->add_tensors(whole);
  };
  // What this rank writes into a checkpoint: the weights and moments it holds that no lower rank
  // holds too. The ranks of a tensor-parallel group hold the same unsplit tensors; the data-parallel
  // ranks (for the routed experts, the expert-parallel groups) hold the same pieces, but for the
  // moments that ZeRO gave to one of them.
  auto checkpoint_shard = [&](std::map<std::string, torch::Tensor>& weights, AdamW& moments) {
    for (const auto& [name, t] : model->tensors()) {
      if (tp_rank > 0 && !tp_splits.count(name)) continue;
      const bool expert = own.count(name) > 0;
      const bool first_copy = (expert ? data_rank / ep : data_rank) == 0;
      if (first_copy) weights[name] = t;
      if ((first_copy || (sharded && !expert)) && adam.m.count(name))
        moments.m[name] = adam.m.at(name), moments.v[name] = adam.v.at(name);
    }
  };
  int late_buckets = 0;  // buckets whose reduction began only after the backward pass
  adam.fused = o.fused != "off";
  if (leader && device.is_cuda()) {
    const auto state = [&](bool built) { return std::string(built && adam.fused ? "on" : "off"); };
    log_info("fused kernels (--fused " + o.fused + "): RMSNorm " + state(fused_rms_norm_built()) + ", AdamW " +
             state(fused_adamw_built()));
  }
  EpochOrder sft_order(o.seed, kSftOrder, sft_train.size());
  std::optional<WindowSampler> sampler;
  if (!sft) {
    sampler.emplace(o, int64_t(train_tokens.size()));
    if (o.data_order == "epoch" && leader) {
      const double rows = double(o.steps) * o.grad_accum * o.batch_size, windows = double(sampler->windows_per_epoch());
      char line[320];
      std::snprintf(line, sizeof line,
                    "--data-order epoch: %lld windows of %d tokens in an epoch; %lld steps read %.0f windows, %.3g epochs%s",
                    (long long)sampler->windows_per_epoch(), o.seq_len, (long long)o.steps, rows, rows / windows,
                    rows > windows ? " (later epochs repeat the data in a new order)" : "");
      log_info(line);
    }
  }
  // One micro-batch of the step, this rank's rows of it (all of them on one process): inputs,
  // targets, the loss mask (SFT) and the tokens the whole global micro-batch holds.
  const int local_batch = o.batch_size / data_ranks;
  auto micro_batch = [&](int64_t step, int micro) -> std::pair<SftBatch, int64_t> {
    const uint64_t index = uint64_t(step) * uint64_t(o.grad_accum) + uint64_t(micro);
    if (sft) {
      std::vector<const SftExample*> rows, global;
      int64_t tokens = 0;
      for (int b = 0; b < o.batch_size; ++b) {
        const SftExample* e = &sft_train[sft_order.at(index * uint64_t(o.batch_size) + uint64_t(b))];
        if (b / local_batch == data_rank) rows.push_back(e);
        global.push_back(e);
        tokens += std::min<int64_t>(int64_t(e->tokens.size()) - 1, o.seq_len);
      }
      return {sft_batch(rows, o.seq_len, device, global), tokens};
    }
    std::vector<int64_t> starts = sampler->starts(index);
    starts = std::vector<int64_t>(starts.begin() + data_rank * local_batch, starts.begin() + (data_rank + 1) * local_batch);
    auto [in, target] = windows(train_tokens, starts, o.seq_len, device);
    return {SftBatch{in, target, {}}, int64_t(o.batch_size) * o.seq_len};
  };
  auto validation_loss = [&]() -> std::optional<double> {
    if (!sft)
      return evaluate_loss(*model, val_tokens, o.eval_batches, o.batch_size, o.seq_len, compute, expert_parallel,
                           tensor_parallel);
    if (sft_val.empty()) return std::nullopt;
    return evaluate_sft_loss(*model, sft_val, o.eval_batches, o.batch_size, o.seq_len, compute, expert_parallel,
                             tensor_parallel);
  };

  std::optional<ProgressBar> bar;
  if (leader) bar.emplace(o.steps, start_step);
  Stopwatch watch;
  Stopwatch window;
  int64_t window_tokens = 0;
  double window_communication = 0, window_communication_share = 0;  // collectives' seconds and share of the window
  LogRow row;
  TrainResult result;
  std::optional<StepProfiler> profiler;
  if (leader && !o.profile.empty()) profiler.emplace(o.profile, start_step, o.steps, device.is_cuda());
  for (int64_t step = start_step; step < o.steps; ++step) {
    if (profiler) profiler->begin_step(step);
    ForwardOptions fo{{}, compute, o.capacity_factor, expert_products(o.expert_products)};
    fo.fused_kernels = o.fused != "off";
    if (comm) {
      fo.sum_over_ranks = sum_over_ranks;
      fo.ranks = data_ranks;
      fo.expert_parallel = expert_parallel;
      fo.tensor_parallel = tensor_parallel;
    }
    std::vector<torch::Tensor> load(static_cast<size_t>(config.num_layers));
    torch::Tensor loss_sum = torch::zeros({}, torch::TensorOptions().device(device)), aux_sum = loss_sum.clone();
    int64_t step_tokens = 0;
    for (int micro = 0; micro < o.grad_accum; ++micro) {
      const auto [batch, tokens] = micro_batch(step, micro);
      step_tokens += tokens;
      fo.allowed = psr_masks(config, o, step, micro, data_rank, local_batch, device);
      const ForwardResult r = model->forward(batch.input, fo);
      torch::Tensor loss = next_token_loss(r.logits, batch.target, batch.mask);
      if (comm && batch.mask.defined()) {
        // Ranks hold different numbers of answer tokens: weight each rank's mean so that the
        // average over ranks is the mean over the global batch's tokens, as on one process.
        const torch::Tensor local = batch.mask.sum().to(torch::kFloat64).reshape({1});
        std::vector<torch::Tensor> counts{local.clone()};
        data_comm->sum(counts);
        loss = loss * (data_ranks * local[0] / counts[0][0].clamp_min(1.0)).to(loss.scalar_type());
      }
      const torch::Tensor objective = (loss + o.aux_loss_weight * r.aux_loss) / double(o.grad_accum);
      if (reducer && micro + 1 == o.grad_accum) reducer->prepare(objective);
      if (expert_reducer && micro + 1 == o.grad_accum) expert_reducer->prepare(objective);
      objective.backward();
      loss_sum += loss.detach();
      aux_sum += r.aux_loss.detach().to(torch::kFloat32);
      for (size_t l = 0; l < load.size(); ++l)
        if (r.expert_load[l].defined()) load[l] = load[l].defined() ? load[l] + r.expert_load[l] : r.expert_load[l];
    }
    if (comm) {
      // The mean over ranks of gradients, losses and (summed) expert loads: one step on every rank.
      late_buckets += reducer->finish();
      if (expert_reducer) late_buckets += expert_reducer->finish();  // the mean over the groups
      torch::NoGradGuard no_grad;
      for (const std::string& name : own_experts)  // the sum of its group's shares: to the mean, as averaged ones
        if (model->tensor(name).grad().defined()) model->tensor(name).mutable_grad().div_(ep);
      std::vector<torch::Tensor> totals{loss_sum.reshape({1}), aux_sum.reshape({1})};
      for (const torch::Tensor& l : load)
        if (l.defined()) totals.push_back(l.contiguous());
      data_comm->sum(totals);
      loss_sum = totals[0][0] / data_ranks, aux_sum = totals[1][0] / data_ranks;
      for (size_t l = 0, i = 2; l < load.size(); ++l)
        if (load[l].defined()) load[l] = totals[i++];
    }
    const double lr = learning_rate(o, step);
    const torch::Tensor grad_norm = clip_gradients(*model, trainable, o.grad_clip, split_gradients);
    adam.step(*model, updated, {o.beta1, o.beta2, o.adam_eps, o.weight_decay}, lr, step + 1);
    if (sharded) data_comm->broadcast_from_owners(parameters, owner);
    for (const auto& name : trainable) model->tensor(name).mutable_grad() = torch::Tensor();
    model->update_router_biases(load, fo.allowed, o.bias_update_rate);
    tokens_seen += step_tokens;
    window_tokens += step_tokens;

    row.step = step + 1;
    row.tokens = tokens_seen;
    row.lr = lr;
    row.loss = loss_sum.item<double>() / o.grad_accum;  // the step's one wait for the device
    row.grad_norm = grad_norm.item<double>();
    row.aux = aux_sum.item<double>() / o.grad_accum;
    if (profiler) profiler->end_step(step);
    require(std::isfinite(row.loss), "train: the loss became " + std::to_string(row.loss) + " at step " +
                                         std::to_string(step + 1) + " (lower the learning rate?)");
    const bool last = step + 1 == o.steps;
    const bool eval_now = last || (o.eval_every > 0 && (step + 1) % o.eval_every == 0);
    // Throughput counts the training steps only: the window's clock is read before validation, and
    // restarted after it (below), so an evaluation never lowers tokens/s or MFU.
    const double window_seconds = std::max(window.seconds(), 1e-9);
    // Under expert or tensor parallelism every rank of rank 0's group takes part in the validation
    // forward passes.
    std::optional<double> val_loss;
    if (eval_now && rank < tp * ep) val_loss = validation_loss();
    if (leader && (eval_now || (step + 1) % o.log_every == 0)) {
      row.tokens_per_s = double(window_tokens) / window_seconds;
      row.tokens_per_s_per_rank = row.tokens_per_s / world;
      row.communication_s = comm ? comm->communication_seconds() - window_communication : 0.0;
      if (o.peak_tflops > 0)
        row.mfu = row.tokens_per_s * model_flops_per_token(config, o.seq_len) / (world * o.peak_tflops * 1e12);
      row.elapsed = elapsed_before + watch.seconds();
      row.val_loss = val_loss;
      append_csv(csv, row);
      if (eval_now) write_loss_svg(csv, o.out_dir / "loss.svg");
      window = Stopwatch();
      window_tokens = 0;
      if (comm) window_communication = comm->communication_seconds();
      window_communication_share = row.communication_s / window_seconds;
      result.tokens_per_second = row.tokens_per_s;
      if (row.val_loss) result.final_val_loss = *row.val_loss;
    }
    char status[200];
    std::snprintf(status, sizeof status, "loss %.4f%s tok/s %.0f", row.loss,
                  row.val_loss ? (" val " + std::to_string(*row.val_loss).substr(0, 6)).c_str() : "", row.tokens_per_s);
    if (comm) {
      const size_t used = std::strlen(status);
      std::snprintf(status + used, sizeof status - used, " (%d ranks, %.0f each) comm %.0f%%", world,
                    row.tokens_per_s_per_rank, 100.0 * window_communication_share);
    }
    if (row.mfu) {
      const size_t used = std::strlen(status);
      std::snprintf(status + used, sizeof status - used, " MFU %.1f%%", 100.0 * *row.mfu);
    }
    if (bar) bar->update(step + 1, status);
    const bool stop = o.stop_after > 0 && step + 1 == o.stop_after && !last;
    const bool save = last || stop || (o.save_every > 0 && (step + 1) % o.save_every == 0);
    if (save) {
      const fs::path dir = checkpoint_dir(o.out_dir, kTrainCheckpoints, step + 1);
      if (leader) begin_checkpoint(dir);
      if (comm) comm->barrier();  // the staging directory is there
      std::map<std::string, torch::Tensor> shard_weights;
      AdamW shard_moments;
      checkpoint_shard(shard_weights, shard_moments);
      write_checkpoint_shard(dir, rank, shard_weights, shard_moments);
      if (comm) comm->barrier();  // every shard is written
      if (leader)
        finish_checkpoint(dir, {world, tp, ep, sharded, {}},
                          {{"step", step + 1},
                           {"tokens", tokens_seen},
                           {"elapsed_s", elapsed_before + watch.seconds()},
                           {"config", to_crossmoe_json(model->config())},
                           {"settings", settings}});
    }
    if (stop) {
      if (bar) bar->finish("stopped after step " + std::to_string(step + 1) + " (resume with --resume)");
      result.steps = step + 1;
      result.final_train_loss = row.loss;
      return result;
    }
  }
  result.steps = o.steps;
  result.final_train_loss = row.loss;
  char done[160];
  if (row.val_loss)
    std::snprintf(done, sizeof done, "trained %lld steps: loss %.4f, validation loss %.4f (perplexity %.2f)",
                  (long long)o.steps, row.loss, result.final_val_loss, std::exp(result.final_val_loss));
  else
    std::snprintf(done, sizeof done, "trained %lld steps: loss %.4f", (long long)o.steps, row.loss);
  if (ep > 1) gather_experts();
  if (tp > 1) gather_slices();
  if (!bar) return result;  // not the leader: rank 0 exports
  bar->finish(done);
  if (reducer) {
    const int64_t buckets = reducer->buckets() + (expert_reducer ? expert_reducer->buckets() : 0);
    log_info("gradient buckets launched after the backward pass instead of during it: " + std::to_string(late_buckets) +
             " of " + std::to_string(buckets * (o.steps - start_step)));
  }

  result.model_dir = o.out_dir / "model";
  model->export_hf(result.model_dir, o.export_dtype);
  log_info("exported " + result.model_dir.string());
  return result;
}

double model_flops_per_token(const ModelConfig& c, int seq_len) {
  const ParamCounts p = count_parameters(c);
  const double matrices = double(p.active - p.embedding + (c.tie_word_embeddings ? p.embedding : 0));
  return 6.0 * matrices + 6.0 * c.num_layers * c.num_heads * c.head_dim * double(seq_len);
}

void write_loss_svg(const fs::path& csv, const fs::path& svg) {
  std::vector<std::array<double, 2>> train, val;
  std::ifstream in(csv);
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    const std::vector<std::string> f = split_csv_line(line);
    if (f.size() < 7) continue;
    train.push_back({std::stod(f[1]), std::stod(f[3])});
    if (!f[6].empty()) val.push_back({std::stod(f[1]), std::stod(f[6])});
  }
  if (train.empty()) return;
  LinePlot plot;
  plot.title = "loss against tokens seen";
  plot.x_label = "tokens";
  const double last = std::max(train.back()[0], val.empty() ? 0.0 : val.back()[0]);
  for (int i = 0; i <= 4; ++i) {
    std::ostringstream label;
    label << std::round(last * i / 4 / 1e3) / 1e3 << "M";
    plot.x_ticks.push_back({last * i / 4, label.str()});
  }
  plot.series.push_back({"train loss", train});
  if (!val.empty()) plot.series.push_back({"validation loss", val});
  write_svg(plot, svg);
}

}  // namespace crossmoe::train
