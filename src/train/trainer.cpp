#include "train/trainer.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <random>
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

namespace {

enum Stream : uint64_t { kBatches = 1, kPsrMasks = 2 };

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

torch::Tensor next_token_loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape(-1));
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

// Keeps the header and the rows of steps up to `step` (a resumed run rewrites what follows).
void truncate_csv(const fs::path& path, int64_t step) {
  std::vector<std::string> keep{kCsvHeader};
  if (std::ifstream in(path); in) {
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line))
      if (!line.empty() && std::stoll(line.substr(0, line.find(','))) <= step) keep.push_back(line);
  }
  std::ofstream out(path, std::ios::trunc);
  for (const auto& line : keep) out << line << "\n";
}

// Checkpoints: written into step-N.tmp, renamed to step-N, then `latest` is replaced by rename.
// A crash at any point leaves `latest` naming a complete checkpoint.
void save_checkpoint(const fs::path& out_dir, const TorchModel& model, const AdamW& adam, int64_t step, int64_t tokens,
                     double elapsed) {
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
                  {{"step", step}, {"tokens", tokens}, {"elapsed_s", elapsed}, {"config", to_crossmoe_json(model.config())}});
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

std::optional<fs::path> latest_checkpoint(const fs::path& out_dir) {
  std::ifstream in(out_dir / "checkpoints" / "latest");
  std::string name;
  if (!in || !std::getline(in, name) || name.empty()) return std::nullopt;
  const fs::path dir = out_dir / "checkpoints" / name;
  require(fs::exists(dir / "state.json"), "checkpoint " + dir.string() + " named by 'latest' is incomplete");
  return dir;
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

TrainResult train_model(const ModelConfig& requested, const TrainOptions& o) {
  require(o.steps > 0 && o.batch_size > 0 && o.seq_len > 1 && o.grad_accum > 0, "train: steps, batch size, sequence "
                                                                                  "length and accumulation must be positive");
  const torch::Device device(o.device);
  if (device.is_cuda()) require(torch::cuda::is_available(), "train: --device cuda but no CUDA device is available");
  const torch::ScalarType compute = o.bf16 ? torch::kBFloat16 : torch::kFloat32;

  const std::vector<uint32_t> train_tokens = read_tokens(o.data_dir / "train.bin");
  const std::vector<uint32_t> val_tokens = read_tokens(o.data_dir / "val.bin");
  require(int64_t(train_tokens.size()) > o.seq_len + 1, "train.bin is shorter than one sequence");
  const nlohmann::json meta = read_json_file(o.data_dir / "meta.json");
  fs::create_directories(o.out_dir);
  const fs::path csv = o.out_dir / "log.csv";

  // The model: a resumed checkpoint, given weights, or a fresh init.
  std::optional<TorchModel> model;
  AdamW adam;
  int64_t start_step = 0, tokens_seen = 0;
  double elapsed_before = 0;
  const auto resume_dir = o.resume ? latest_checkpoint(o.out_dir) : std::nullopt;
  if (resume_dir) {
    const nlohmann::json state = read_json_file(*resume_dir / "state.json");
    ModelConfig config = parse_model_config(state.at("config"));
    model.emplace(config, 0, device);
    auto weights = load_tensors(*resume_dir / "model.safetensors", device);
    for (auto& [name, t] : model->tensors()) {
      require(weights.count(name), "checkpoint " + resume_dir->string() + " lacks " + name);
      model->tensor(name) = weights.at(name);
    }
    for (auto& [key, t] : load_tensors(*resume_dir / "optimizer.safetensors", device))
      (key[0] == 'm' ? adam.m : adam.v)[key.substr(2)] = t;
    start_step = state.at("step").get<int64_t>();
    tokens_seen = state.at("tokens").get<int64_t>();
    elapsed_before = state.value("elapsed_s", 0.0);
    log_info("resuming from " + resume_dir->string() + " at step " + std::to_string(start_step));
  } else if (!o.init_model.empty()) {
    model.emplace(TorchModel::load(o.init_model, device));
  } else {
    model.emplace(requested, o.seed, device);
  }
  const ModelConfig& config = model->config();
  require(int64_t(meta.at("vocab_size").get<int>()) <= config.vocab_size,
          "the model's vocabulary is smaller than the tokenizer's (" + std::to_string(meta.at("vocab_size").get<int>()) + ")");
  truncate_csv(csv, start_step);

  const std::vector<std::string> trainable = model->trainable_names();
  for (const auto& name : trainable) model->tensor(name).set_requires_grad(true);
  const int64_t tokens_per_step = int64_t(o.batch_size) * o.seq_len * o.grad_accum;
  const int64_t max_start = int64_t(train_tokens.size()) - o.seq_len - 1;

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
    for (int micro = 0; micro < o.grad_accum; ++micro) {
      auto rng = stream_rng(o.seed, kBatches, uint64_t(step) * uint64_t(o.grad_accum) + uint64_t(micro));
      std::uniform_int_distribution<int64_t> pick(0, max_start);
      std::vector<int64_t> starts(static_cast<size_t>(o.batch_size));
      for (auto& s : starts) s = pick(rng);
      auto [in, target] = windows(train_tokens, starts, o.seq_len, device);
      const ForwardResult r = model->forward(in, fo);
      const torch::Tensor loss = next_token_loss(r.logits, target);
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
    tokens_seen += tokens_per_step;
    window_tokens += tokens_per_step;

    row.step = step + 1;
    row.tokens = tokens_seen;
    row.lr = lr;
    row.loss = loss_sum.item<double>() / o.grad_accum;
    row.aux = aux_sum.item<double>() / o.grad_accum;
    require(std::isfinite(row.loss), "train: the loss became " + std::to_string(row.loss) + " at step " +
                                         std::to_string(step + 1) + " (lower the learning rate?)");
    const bool last = step + 1 == o.steps;
    const bool eval_now = last || (o.eval_every > 0 && (step + 1) % o.eval_every == 0);
    if (eval_now || (step + 1) % std::max<int64_t>(o.log_every, 1) == 0) {
      row.tokens_per_s = double(window_tokens) / std::max(window.seconds(), 1e-9);
      row.elapsed = elapsed_before + watch.seconds();
      row.val_loss.reset();
      if (eval_now) row.val_loss = evaluate_loss(*model, val_tokens, o.eval_batches, o.batch_size, o.seq_len, compute);
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
      save_checkpoint(o.out_dir, *model, adam, step + 1, tokens_seen, elapsed_before + watch.seconds());
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
  std::snprintf(done, sizeof done, "trained %lld steps: loss %.4f, validation loss %.4f (perplexity %.2f)",
                (long long)o.steps, row.loss, result.final_val_loss, std::exp(result.final_val_loss));
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
