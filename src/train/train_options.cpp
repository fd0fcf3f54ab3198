#include "train/train_options.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <set>
#include <type_traits>

#include "util/error.hpp"

namespace crossmoe::train {

namespace fs = std::filesystem;

namespace {

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
  visit("data-order", o.data_order);
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
  visit("psr-mask", o.psr_mask);
  visit("seed", o.seed);
  visit("bf16", o.bf16);
  // Free to change on resume (kFreeSettings): they do not change the trained weights.
  visit("eval-every", o.eval_every);
  visit("eval-batches", o.eval_batches);
  visit("save-every", o.save_every);
  visit("log-every", o.log_every);
  visit("device", o.device);
  visit("export-dtype", o.export_dtype);
  visit("deterministic", o.deterministic);
  visit("expert-products", o.expert_products);
  visit("fused", o.fused);
}
const std::set<std::string> kFreeSettings{"eval-every", "eval-batches", "save-every", "log-every", "device", "export-dtype",
                                          "deterministic", "expert-products", "fused"};


}  // namespace

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
  require(o.data_order == "random" || o.data_order == "epoch",
          "--data-order must be random or epoch (got '" + o.data_order + "')");
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
  require(o.psr_mask == "step" || o.psr_mask == "token", "--psr-mask must be step or token (got '" + o.psr_mask + "')");
  require(o.expert_products == "auto" || o.expert_products == "grouped" || o.expert_products == "padded" ||
              o.expert_products == "loop" || o.expert_products == "dense",
          "--expert-products must be auto, grouped, padded, loop or dense (got '" + o.expert_products + "')");
  require(o.fused == "auto" || o.fused == "off", "--fused must be auto or off (got '" + o.fused + "')");
  require(o.psr.end == 0 || o.psr.end > o.psr.start,
          "--psr-end (step " + std::to_string(o.psr.end) + ") must come after --psr-start (step " +
              std::to_string(o.psr.start) + "), or be 0 for no progressive scaling routing");
  non_negative(double(o.eval_every), "eval-every");
  positive(o.eval_batches, "eval-batches");
  non_negative(double(o.save_every), "save-every");
  positive(double(o.log_every), "log-every");
  positive(o.expert_parallel, "ep");
  positive(o.tensor_parallel, "tp");
  require(std::isfinite(o.bucket_mb) && o.bucket_mb > 0, "--bucket-mb must be a positive number of MiB (got " +
                                                           std::to_string(o.bucket_mb) + ")");
  non_negative(double(o.stop_after), "stop-after");
  require(o.sft_validation_every == 0 || o.sft_validation_every >= 2,
          "--sft-validation-every must be 0 (no validation) or at least 2 (got " + std::to_string(o.sft_validation_every) + ")");
  const bool cuda = o.device == "cuda" || (o.device.rfind("cuda:", 0) == 0 && o.device.size() > 5 &&
                                           o.device.find_first_not_of("0123456789", 5) == std::string::npos);
  require(o.device == "cpu" || cuda, "--device must be cpu, cuda or cuda:N (got '" + o.device + "')");
  require(!o.out_dir.empty(), "--out is required");
  if (!o.profile.empty()) {  // checked now rather than after the steps it records
    const fs::path dir = o.profile.has_parent_path() ? o.profile.parent_path() : fs::path(".");
    require(fs::is_directory(dir), "--profile " + o.profile.string() + ": no directory " + dir.string() + " to write it in");
  }
  require(!o.sft_file.empty() || !o.data_dir.empty(), "--data (or --sft) is required");
}

int64_t schedule_step(const std::string& text, int64_t steps, const std::string& flag) {
  const bool percent = !text.empty() && text.back() == '%';
  const std::string number = percent ? text.substr(0, text.size() - 1) : text;
  // Plain decimals only: no sign, exponent, hex, inf or nan.
  const bool decimal = number.find_first_not_of("0123456789.") == std::string::npos &&
                       number.find_first_of("0123456789") != std::string::npos &&
                       std::count(number.begin(), number.end(), '.') <= (percent ? 1 : 0) && number.size() <= 18;
  if (!decimal)
    throw UsageError(flag + " takes a step (e.g. 400) or a percentage of --steps (e.g. 10%); got '" + text + "'");
  const double value = std::stod(number);
  if (!percent) return int64_t(std::stoll(number));
  if (value > 100) throw UsageError(flag + " " + text + ": a percentage of --steps must be between 0% and 100%");
  return std::llround(value / 100.0 * double(steps));
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

bool free_setting(const std::string& key) { return kFreeSettings.count(key) > 0; }

}  // namespace crossmoe::train
