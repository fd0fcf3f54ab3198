#include "train/trainer.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <sstream>

#include "model/hf_config.hpp"
#include "train/corpus.hpp"
#include "train/optimizer.hpp"
#include "util/error.hpp"
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

SftBatch sft_batch(const std::vector<const SftExample*>& examples, int seq_len, torch::Device device) {
  require(!examples.empty() && seq_len > 0, "sft_batch: no conversations");
  int64_t longest = 2;
  for (const SftExample* e : examples) longest = std::max<int64_t>(longest, std::min<int64_t>(int64_t(e->tokens.size()), seq_len + 1));
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

enum Stream : uint64_t { kBatches = 1, kPsrMasks = 2, kSftOrder = 3 };

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

// Per MoE layer of a reuse layout with PSR on: the candidates its router may pick this step.
std::vector<torch::Tensor> psr_masks(const ModelConfig& c, const TrainOptions& o, int64_t step) {
  std::vector<torch::Tensor> allowed(static_cast<size_t>(c.num_layers));
  if (!o.psr.enabled() || c.moe.cross_layer != CrossLayer::Reuse) return allowed;
  for (int l = 0; l < c.num_layers; ++l) {
    if (!c.layers[l].is_moe) continue;
    const int C = c.num_candidates(l), E = c.moe.num_experts;
    const int pool = psr_pool_size(E, C / E, step, o.psr);
    if (pool >= C) continue;
    auto rng = stream_rng(o.seed, kPsrMasks, uint64_t(step) * 4096 + uint64_t(l));
    std::vector<int> order(static_cast<size_t>(C));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    torch::Tensor mask = torch::ones({C}, torch::kBool);
    for (int i = 0; i < C - pool; ++i) mask[order[size_t(i)]] = false;
    allowed[size_t(l)] = mask.to(torch::Device(o.device));
  }
  return allowed;
}

struct LogRow {
  int64_t step = 0, tokens = 0;
  double lr = 0, loss = 0, aux = 0, grad_norm = 0, tokens_per_s = 0, elapsed = 0;
  std::optional<double> val_loss;
};
constexpr const char* kCsvHeader = "step,tokens,lr,loss,aux_loss,grad_norm,val_loss,val_ppl,tokens_per_s,elapsed_s";

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
  std::snprintf(buf, sizeof buf, ",%.1f,%.1f\n", r.tokens_per_s, r.elapsed);
  out << buf;
  require(out.good(), "cannot write " + path.string());
}

// Keeps the header and the complete rows of steps up to `step` (a resumed run rewrites what
// follows; a row cut short by a kill is dropped). Rewritten by rename, so a kill never loses it.
void truncate_csv(const fs::path& path, int64_t step) {
  const int columns = int(std::count(kCsvHeader, kCsvHeader + std::strlen(kCsvHeader), ',')) + 1;
  std::vector<std::string> keep{kCsvHeader};
  if (std::ifstream in(path); in) {
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      if (int(std::count(line.begin(), line.end(), ',')) + 1 != columns) continue;
      char* end = nullptr;
      const long long row_step = std::strtoll(line.c_str(), &end, 10);
      if (end != line.c_str() && *end == ',' && row_step <= step) keep.push_back(line);
    }
  }
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    for (const auto& line : keep) out << line << "\n";
    require(out.good(), "cannot write " + tmp.string());
  }
  fs::rename(tmp, path);
}

// Checkpoints: written into step-N.tmp, renamed to step-N, then `latest` is replaced by rename.
// A crash at any point leaves `latest` naming a complete checkpoint.
void save_checkpoint(const fs::path& out_dir, const TorchModel& model, const AdamW& adam, int64_t step, int64_t tokens,
                     double elapsed, const nlohmann::json& settings) {
  const fs::path root = out_dir / "checkpoints";
  char name[32];
  std::snprintf(name, sizeof name, "step-%07lld", (long long)step);
  const fs::path final_dir = root / name, tmp = root / (std::string(name) + ".tmp");
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  save_tensors(tmp / "model.safetensors", model.tensors());
  std::map<std::string, torch::Tensor> opt;
  for (const auto& [k, t] : adam.m) opt["m." + k] = t;
  for (const auto& [k, t] : adam.v) opt["v." + k] = t;
  save_tensors(tmp / "optimizer.safetensors", opt);
  write_json_file(tmp / "state.json",
                  {{"step", step},
                   {"tokens", tokens},
                   {"elapsed_s", elapsed},
                   {"config", to_crossmoe_json(model.config())},
                   {"settings", settings}});
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  {
    std::ofstream latest(root / "latest.tmp", std::ios::trunc);
    latest << name << "\n";
    require(latest.good(), "cannot write " + (root / "latest.tmp").string());
  }
  fs::rename(root / "latest.tmp", root / "latest");
  for (const auto& entry : fs::directory_iterator(root))
    if (entry.is_directory() && entry.path().filename() != name) fs::remove_all(entry.path());
}

// The newest checkpoint directory (step-NNNNNNN, renamed into place only once complete) that
// has all its files. `latest` is not trusted: a kill between the two renames leaves it one
// checkpoint behind, and a user may have emptied or removed it.
std::optional<fs::path> newest_checkpoint_dir(const fs::path& out_dir) {
  const fs::path root = out_dir / "checkpoints";
  std::optional<fs::path> best;
  long long best_step = -1;
  if (!fs::is_directory(root)) return best;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || name.size() != 12 || name.rfind("step-", 0) != 0 ||
        name.find_first_not_of("0123456789", 5) != std::string::npos)
      continue;
    bool complete = true;
    for (const char* f : {"state.json", "model.safetensors", "optimizer.safetensors"})
      complete = complete && fs::is_regular_file(entry.path() / f);
    if (!complete) {
      log_info("skipping incomplete checkpoint " + entry.path().string());
      continue;
    }
    const long long step = std::stoll(name.substr(5));
    if (step > best_step) best_step = step, best = entry.path();
  }
  return best;
}

// What state.json of a checkpoint says, checked field by field (the file is untrusted input).
CheckpointInfo read_checkpoint_state(const fs::path& dir) {
  const fs::path path = dir / "state.json";
  const nlohmann::json state = read_json_file(path);
  const std::string where = path.string() + ": ";
  require(state.is_object(), where + "expected a JSON object");
  auto count = [&](const char* key) {
    require(state.contains(key) && state[key].is_number_integer() && state[key].get<int64_t>() >= 0,
            where + "'" + key + "' must be a non-negative integer");
    return state[key].get<int64_t>();
  };
  CheckpointInfo s;
  s.dir = dir;
  s.step = count("step");
  s.tokens = count("tokens");
  require(s.step > 0, where + "'step' must be positive");
  if (state.contains("elapsed_s")) {
    require(state["elapsed_s"].is_number(), where + "'elapsed_s' must be a number");
    s.elapsed_s = state["elapsed_s"].get<double>();
  }
  require(state.contains("config") && state["config"].is_object(), where + "'config' must be an object");
  try {
    s.config = parse_model_config(state["config"]);
  } catch (const Error& e) {
    throw Error(where + "config: " + e.what());
  } catch (const nlohmann::json::exception&) {
    throw Error(where + "config: malformed model description");
  }
  if (state.contains("settings")) {
    try {
      with_settings(TrainOptions{}, state["settings"]);
    } catch (const Error& e) {
      throw Error(where + e.what());
    }
    s.settings = state["settings"];
  }
  return s;
}

// The checkpoint's weights into `model` and its AdamW moments into `adam`: every tensor present
// with the model's shape, nothing unknown.
void load_checkpoint_tensors(const fs::path& dir, TorchModel& model, AdamW& adam) {
  const fs::path weights_path = dir / "model.safetensors", optimizer_path = dir / "optimizer.safetensors";
  auto weights = load_tensors(weights_path, model.device());
  for (auto& [name, t] : model.tensors()) {
    const auto it = weights.find(name);
    require(it != weights.end(), weights_path.string() + " lacks " + name);
    require(it->second.sizes() == t.sizes(), weights_path.string() + ": " + name + " has the wrong shape");
    model.tensor(name) = it->second;
  }
  const std::vector<std::string> trainable = model.trainable_names();
  for (auto& [key, t] : load_tensors(optimizer_path, model.device())) {
    const std::string name = key.size() > 2 ? key.substr(2) : "";
    const bool known = (key.rfind("m.", 0) == 0 || key.rfind("v.", 0) == 0) &&
                       std::binary_search(trainable.begin(), trainable.end(), name);
    require(known, optimizer_path.string() + ": unexpected tensor '" + key + "'");
    require(t.sizes() == model.tensors().at(name).sizes(), optimizer_path.string() + ": " + key + " has the wrong shape");
    (key[0] == 'm' ? adam.m : adam.v)[name] = t;
  }
  for (const auto& [name, m] : adam.m)
    require(adam.v.count(name), optimizer_path.string() + ": m." + name + " without v." + name);
  for (const auto& [name, v] : adam.v)
    require(adam.m.count(name), optimizer_path.string() + ": v." + name + " without m." + name);
}

// The settings visitor: every option that shapes the trained weights, by flag name.
template <class Options, class Visit>
void for_each_setting(Options& o, Visit&& visit) {
  visit("data", o.data_dir);
  visit("init", o.init_model);
  visit("sft", o.sft_file);
  visit("sft-validation-every", o.sft_validation_every);
  visit("steps", o.steps);
  visit("batch", o.batch_size);
  visit("seq-len", o.seq_len);
  visit("accum", o.grad_accum);
  visit("lr", o.lr);
  visit("min-lr-ratio", o.min_lr_ratio);
  visit("warmup", o.warmup);
  visit("weight-decay", o.weight_decay);
  visit("beta1", o.beta1);
  visit("beta2", o.beta2);
  visit("clip", o.grad_clip);
  visit("aux-loss", o.aux_loss_weight);
  visit("bias-rate", o.bias_update_rate);
  visit("capacity-factor", o.capacity_factor);
  visit("psr-start", o.psr.start);
  visit("psr-end", o.psr.end);
  visit("seed", o.seed);
  visit("bf16", o.bf16);
  // Free to change on resume (kFreeSettings): they do not change the trained weights.
  visit("eval-every", o.eval_every);
  visit("eval-batches", o.eval_batches);
  visit("save-every", o.save_every);
  visit("log-every", o.log_every);
  visit("device", o.device);
  visit("export-dtype", o.export_dtype);
}
const std::set<std::string> kFreeSettings{"eval-every", "eval-batches", "save-every", "log-every", "device", "export-dtype"};

// Visits the SFT conversations of a step in a seeded order: a fresh shuffle every epoch, so
// that the batches of a step depend only on (seed, step), as resuming needs.
class SftOrder {
 public:
  SftOrder(uint64_t seed, size_t count) : seed_(seed), count_(count) {}
  size_t at(uint64_t position) {
    const uint64_t epoch = position / count_;
    if (epoch != epoch_ || order_.empty()) {
      order_.resize(count_);
      std::iota(order_.begin(), order_.end(), size_t(0));
      auto rng = stream_rng(seed_, kSftOrder, epoch);
      std::shuffle(order_.begin(), order_.end(), rng);
      epoch_ = epoch;
    }
    return order_[size_t(position % count_)];
  }

 private:
  uint64_t seed_;
  size_t count_;
  uint64_t epoch_ = 0;
  std::vector<size_t> order_;
};

void require_ids_below(const std::vector<uint32_t>& tokens, int vocab, const std::string& what) {
  const auto top = std::max_element(tokens.begin(), tokens.end());
  require(top == tokens.end() || int64_t(*top) < vocab, what + " has token id " + std::to_string(top == tokens.end() ? 0 : *top) +
                                                            ", outside the model's vocabulary of " + std::to_string(vocab));
}

}  // namespace

double evaluate_loss(const TorchModel& model, const std::vector<uint32_t>& tokens, int batches, int batch_size, int seq_len,
                     torch::ScalarType compute_dtype) {
  torch::NoGradGuard no_grad;
  const int64_t available = (int64_t(tokens.size()) - 1) / seq_len;
  require(available > 0, "validation data is shorter than one sequence of " + std::to_string(seq_len) + " tokens");
  const int64_t windows_total = std::min<int64_t>(available, int64_t(batches) * batch_size);
  double sum = 0;
  int64_t count = 0;
  for (int64_t first = 0; first < windows_total; first += batch_size) {
    std::vector<int64_t> starts;
    for (int64_t w = first; w < std::min<int64_t>(windows_total, first + batch_size); ++w) starts.push_back(w * seq_len);
    auto [in, target] = windows(tokens, starts, seq_len, model.device());
    ForwardOptions fo;
    fo.compute_dtype = compute_dtype;
    sum += next_token_loss(model.forward(in, fo).logits, target).item<double>() * double(starts.size());
    count += int64_t(starts.size());
  }
  return sum / double(count);
}

double evaluate_sft_loss(const TorchModel& model, const std::vector<SftExample>& examples, int batches, int batch_size,
                         int seq_len, torch::ScalarType compute_dtype) {
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
    const double trained = batch.mask.sum().item<double>();
    sum += next_token_loss(model.forward(batch.input, fo).logits, batch.target, batch.mask).item<double>() * trained;
    count += trained;
  }
  require(count > 0, "the SFT validation conversations have no assistant token within --seq-len");
  return sum / count;
}

void check_options(const TrainOptions& o) {
  auto positive = [](double v, const char* flag) {
    require(v > 0, std::string("--") + flag + " must be positive (got " + std::to_string(v) + ")");
  };
  auto non_negative = [](double v, const char* flag) {
    require(v >= 0, std::string("--") + flag + " must be zero or more (got " + std::to_string(v) + ")");
  };
  auto fraction = [](double v, const char* flag, bool one_allowed) {
    require(v >= 0 && (one_allowed ? v <= 1 : v < 1),
            std::string("--") + flag + " must be in [0, 1" + (one_allowed ? "]" : ")") + " (got " + std::to_string(v) + ")");
  };
  positive(double(o.steps), "steps");
  positive(o.batch_size, "batch");
  require(o.seq_len >= 2, "--seq-len must be at least 2 (got " + std::to_string(o.seq_len) + ")");
  positive(o.grad_accum, "accum");
  require(std::isfinite(o.lr) && o.lr > 0, "--lr must be a positive number (got " + std::to_string(o.lr) + ")");
  fraction(o.min_lr_ratio, "min-lr-ratio", true);
  non_negative(double(o.warmup), "warmup");
  require(std::isfinite(o.weight_decay) && o.weight_decay >= 0 && o.weight_decay * o.lr < 1,
          "--weight-decay must be zero or more with --lr x --weight-decay below 1");
  fraction(o.beta1, "beta1", false);
  fraction(o.beta2, "beta2", false);
  positive(o.adam_eps, "adam-eps");
  non_negative(o.grad_clip, "clip");
  non_negative(o.aux_loss_weight, "aux-loss");
  non_negative(o.bias_update_rate, "bias-rate");
  non_negative(o.capacity_factor, "capacity-factor");
  non_negative(double(o.psr.start), "psr-start");
  non_negative(double(o.psr.end), "psr-end");
  non_negative(double(o.eval_every), "eval-every");
  positive(o.eval_batches, "eval-batches");
  non_negative(double(o.save_every), "save-every");
  positive(double(o.log_every), "log-every");
  non_negative(double(o.stop_after), "stop-after");
  require(o.sft_validation_every == 0 || o.sft_validation_every >= 2,
          "--sft-validation-every must be 0 (no validation) or at least 2 (got " + std::to_string(o.sft_validation_every) + ")");
  const bool cuda = o.device == "cuda" || (o.device.rfind("cuda:", 0) == 0 && o.device.size() > 5 &&
                                           o.device.find_first_not_of("0123456789", 5) == std::string::npos);
  require(o.device == "cpu" || cuda, "--device must be cpu, cuda or cuda:N (got '" + o.device + "')");
  require(!o.out_dir.empty(), "--out is required");
  require(!o.sft_file.empty() || !o.data_dir.empty(), "--data (or --sft) is required");
}

nlohmann::json training_settings(const TrainOptions& o) {
  nlohmann::json settings = nlohmann::json::object();
  for_each_setting(o, [&](const char* key, const auto& value) {
    using T = std::decay_t<decltype(value)>;
    if constexpr (std::is_same_v<T, fs::path>)
      settings[key] = value.empty() ? std::string() : fs::absolute(value).lexically_normal().string();
    else if constexpr (std::is_same_v<T, DType>)
      settings[key] = dtype_name(value);
    else
      settings[key] = value;
  });
  return settings;
}

TrainOptions with_settings(TrainOptions o, const nlohmann::json& settings) {
  require(settings.is_object(), "training settings must be a JSON object");
  const nlohmann::json known = training_settings(o);
  for (const auto& [key, value] : settings.items())
    require(known.contains(key), "unknown training setting '" + key + "'");
  for_each_setting(o, [&](const char* key, auto& field) {
    if (!settings.contains(key)) return;
    const nlohmann::json& v = settings[key];
    using T = std::decay_t<decltype(field)>;
    const std::string bad = std::string("training setting '") + key + "' has the wrong type or range: " + v.dump();
    if constexpr (std::is_same_v<T, bool>) {
      require(v.is_boolean(), bad);
      field = v.get<bool>();
    } else if constexpr (std::is_same_v<T, DType>) {
      require(v.is_string() && parse_dtype(v.get<std::string>(), &field), bad);
    } else if constexpr (std::is_same_v<T, uint64_t>) {
      require(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0), bad);
      field = v.get<uint64_t>();
    } else if constexpr (std::is_integral_v<T>) {
      require(v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)), bad);
      const int64_t x = v.get<int64_t>();
      require(x >= int64_t(std::numeric_limits<T>::min()) && x <= int64_t(std::numeric_limits<T>::max()), bad);
      field = T(x);
    } else if constexpr (std::is_floating_point_v<T>) {
      require(v.is_number(), bad);
      field = v.get<double>();
    } else {
      require(v.is_string(), bad);
      field = v.get<std::string>();
    }
  });
  return o;
}

std::optional<CheckpointInfo> newest_checkpoint(const fs::path& out_dir) {
  const auto dir = newest_checkpoint_dir(out_dir);
  if (!dir) return std::nullopt;
  return read_checkpoint_state(*dir);
}

std::optional<CheckpointInfo> starting_checkpoint(const fs::path& out_dir, bool resume) {
  std::optional<CheckpointInfo> checkpoint = resume ? newest_checkpoint(out_dir) : std::nullopt;
  if (!checkpoint) {
    const bool has_run = fs::exists(out_dir / "log.csv") ||
                         (fs::is_directory(out_dir / "checkpoints") && !fs::is_empty(out_dir / "checkpoints"));
    require(!has_run, out_dir.string() + (resume ? " has a log but no complete checkpoint to resume from"
                                                 : " already holds a run: pass --resume to continue it") +
                          "; choose another --out (or move that directory away)");
  }
  return checkpoint;
}

void check_resume(const TrainOptions& o, const CheckpointInfo& checkpoint) {
  if (checkpoint.settings.is_null()) {
    log_info(checkpoint.dir.string() + " predates stored settings: the command line's settings are used");
  } else {
    const nlohmann::json now = training_settings(o), then = training_settings(with_settings(o, checkpoint.settings));
    std::string differences;
    for (const auto& [key, value] : then.items())
      if (now[key] != value && !kFreeSettings.count(key))
        differences += std::string(differences.empty() ? "" : ", ") + "--" + key + " " + now[key].dump() +
                       " (checkpoint: " + value.dump() + ")";
    if (!differences.empty()) {
      require(o.force_settings,
              "--resume: settings differ from the checkpoint's: " + differences + "; pass --force-settings to change them");
      log_info("--force-settings: changing " + differences);
    }
  }
  require(checkpoint.step < o.steps, "--resume: the run already finished at step " + std::to_string(checkpoint.step) +
                                         " (its model is in " + (o.out_dir / "model").string() +
                                         "); to train on, pass a larger --steps with --force-settings");
}

TrainResult train_model(const ModelConfig& requested, const TrainOptions& o) {
  check_options(o);
  const torch::Device device(o.device);
  if (device.is_cuda()) require(torch::cuda::is_available(), "train: --device cuda but no CUDA device is available");
  const torch::ScalarType compute = o.bf16 ? torch::kBFloat16 : torch::kFloat32;
  const fs::path csv = o.out_dir / "log.csv";
  const std::optional<CheckpointInfo> resumed = starting_checkpoint(o.out_dir, o.resume);
  if (resumed) check_resume(o, *resumed);

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
  require(data_vocab <= config.vocab_size, "the model's vocabulary (" + std::to_string(config.vocab_size) +
                                               ") is smaller than the tokenizer's (" + std::to_string(data_vocab) + ")");
  require_ids_below(train_tokens, config.vocab_size, (o.data_dir / "train.bin").string());
  require_ids_below(val_tokens, config.vocab_size, (o.data_dir / "val.bin").string());
  truncate_csv(csv, start_step);
  const nlohmann::json settings = training_settings(o);

  const std::vector<std::string> trainable = model->trainable_names();
  for (const auto& name : trainable) model->tensor(name).set_requires_grad(true);
  const int64_t max_start = int64_t(train_tokens.size()) - o.seq_len - 1;
  SftOrder sft_order(o.seed, sft_train.size());
  // One micro-batch of the step: inputs, targets, the loss mask (SFT) and the tokens it holds.
  auto micro_batch = [&](int64_t step, int micro) -> std::pair<SftBatch, int64_t> {
    const uint64_t index = uint64_t(step) * uint64_t(o.grad_accum) + uint64_t(micro);
    if (sft) {
      std::vector<const SftExample*> rows;
      int64_t tokens = 0;
      for (int b = 0; b < o.batch_size; ++b) {
        rows.push_back(&sft_train[sft_order.at(index * uint64_t(o.batch_size) + uint64_t(b))]);
        tokens += std::min<int64_t>(int64_t(rows.back()->tokens.size()) - 1, o.seq_len);
      }
      return {sft_batch(rows, o.seq_len, device), tokens};
    }
    auto rng = stream_rng(o.seed, kBatches, index);
    std::uniform_int_distribution<int64_t> pick(0, max_start);
    std::vector<int64_t> starts(static_cast<size_t>(o.batch_size));
    for (auto& s : starts) s = pick(rng);
    auto [in, target] = windows(train_tokens, starts, o.seq_len, device);
    return {SftBatch{in, target, {}}, int64_t(o.batch_size) * o.seq_len};
  };
  auto validation_loss = [&]() -> std::optional<double> {
    if (!sft) return evaluate_loss(*model, val_tokens, o.eval_batches, o.batch_size, o.seq_len, compute);
    if (sft_val.empty()) return std::nullopt;
    return evaluate_sft_loss(*model, sft_val, o.eval_batches, o.batch_size, o.seq_len, compute);
  };

  ProgressBar bar(o.steps, start_step);
  Stopwatch watch;
  Stopwatch window;
  int64_t window_tokens = 0;
  LogRow row;
  TrainResult result;
  for (int64_t step = start_step; step < o.steps; ++step) {
    const std::vector<torch::Tensor> allowed = psr_masks(config, o, step);
    ForwardOptions fo{allowed, compute, o.capacity_factor};
    std::vector<torch::Tensor> load(static_cast<size_t>(config.num_layers));
    torch::Tensor loss_sum = torch::zeros({}, torch::TensorOptions().device(device)), aux_sum = loss_sum.clone();
    int64_t step_tokens = 0;
    for (int micro = 0; micro < o.grad_accum; ++micro) {
      const auto [batch, tokens] = micro_batch(step, micro);
      step_tokens += tokens;
      const ForwardResult r = model->forward(batch.input, fo);
      const torch::Tensor loss = next_token_loss(r.logits, batch.target, batch.mask);
      ((loss + o.aux_loss_weight * r.aux_loss) / double(o.grad_accum)).backward();
      loss_sum += loss.detach();
      aux_sum += r.aux_loss.detach().to(torch::kFloat32);
      for (size_t l = 0; l < load.size(); ++l)
        if (r.expert_load[l].defined()) load[l] = load[l].defined() ? load[l] + r.expert_load[l] : r.expert_load[l];
    }
    const double lr = learning_rate(o, step);
    row.grad_norm = clip_gradients(*model, trainable, o.grad_clip);
    adam.step(*model, trainable, {o.beta1, o.beta2, o.adam_eps, o.weight_decay}, lr, step + 1);
    for (const auto& name : trainable) model->tensor(name).mutable_grad() = torch::Tensor();
    model->update_router_biases(load, allowed, o.bias_update_rate);
    tokens_seen += step_tokens;
    window_tokens += step_tokens;

    row.step = step + 1;
    row.tokens = tokens_seen;
    row.lr = lr;
    row.loss = loss_sum.item<double>() / o.grad_accum;
    row.aux = aux_sum.item<double>() / o.grad_accum;
    require(std::isfinite(row.loss), "train: the loss became " + std::to_string(row.loss) + " at step " +
                                         std::to_string(step + 1) + " (lower the learning rate?)");
    const bool last = step + 1 == o.steps;
    const bool eval_now = last || (o.eval_every > 0 && (step + 1) % o.eval_every == 0);
    if (eval_now || (step + 1) % o.log_every == 0) {
      row.tokens_per_s = double(window_tokens) / std::max(window.seconds(), 1e-9);
      row.elapsed = elapsed_before + watch.seconds();
      row.val_loss.reset();
      if (eval_now) row.val_loss = validation_loss();
      append_csv(csv, row);
      if (eval_now) write_loss_svg(csv, o.out_dir / "loss.svg");
      window = Stopwatch();
      window_tokens = 0;
      result.tokens_per_second = row.tokens_per_s;
      if (row.val_loss) result.final_val_loss = *row.val_loss;
    }
    char status[160];
    std::snprintf(status, sizeof status, "loss %.4f%s tok/s %.0f", row.loss,
                  row.val_loss ? (" val " + std::to_string(*row.val_loss).substr(0, 6)).c_str() : "", row.tokens_per_s);
    bar.update(step + 1, status);
    const bool stop = o.stop_after > 0 && step + 1 == o.stop_after && !last;
    if (last || stop || (o.save_every > 0 && (step + 1) % o.save_every == 0))
      save_checkpoint(o.out_dir, *model, adam, step + 1, tokens_seen, elapsed_before + watch.seconds(), settings);
    if (stop) {
      bar.finish("stopped after step " + std::to_string(step + 1) + " (resume with --resume)");
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
  bar.finish(done);

  result.model_dir = o.out_dir / "model";
  model->export_hf(result.model_dir, o.export_dtype);
  log_info("exported " + result.model_dir.string());
  return result;
}

void write_loss_svg(const fs::path& csv, const fs::path& svg) {
  std::vector<std::array<double, 2>> train, val;
  std::ifstream in(csv);
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream ss(line);
    for (std::string cell; std::getline(ss, cell, ',');) f.push_back(cell);
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
