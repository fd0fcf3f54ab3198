#include "train/checkpoint_state.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <vector>

#include "model/hf_config.hpp"
#include "util/atomic_file.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"
#include "util/progress.hpp"

namespace crossmoe::train {

namespace fs = std::filesystem;

namespace {

// The number a checkpoint directory's name carries; nullopt for any other name (PREFIX-NNNNN.tmp,
// `latest`, a user's files).
std::optional<int64_t> checkpoint_number(const std::string& name, const CheckpointNaming& naming) {
  const std::string prefix = naming.prefix;
  if (name.size() != prefix.size() + size_t(naming.digits) || name.rfind(prefix, 0) != 0 ||
      name.find_first_not_of("0123456789", prefix.size()) != std::string::npos)
    return std::nullopt;
  return std::stoll(name.substr(prefix.size()));
}

// The fields of a JSON object (a state.json, a manifest.json or an object inside one), each checked:
// a message naming the file and the key otherwise.
class CheckedFields {
 public:
  explicit CheckedFields(const fs::path& file) : CheckedFields(file.string() + ": ", read_json_file(file)) {}
  CheckedFields(std::string where, nlohmann::json object) : where_(std::move(where)), state_(std::move(object)) {
    require(state_.is_object(), where_ + "expected a JSON object");
  }
  const nlohmann::json& json() const { return state_; }
  const std::string& where() const { return where_; }

  // An integer in [low, high].
  int64_t integer(const char* key, int64_t low, int64_t high) const {
    const std::string bad = where() + "'" + key + "' must be an integer from " + std::to_string(low) + " to " +
                            std::to_string(high);
    require(state_.contains(key) && state_[key].is_number_integer(), bad);
    const nlohmann::json& v = state_[key];
    require(!(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())), bad);
    const int64_t x = v.get<int64_t>();
    require(x >= low && x <= high, bad);
    return x;
  }
  bool flag(const char* key) const {
    require(state_.contains(key) && state_[key].is_boolean(), where() + "'" + key + "' must be true or false");
    return state_[key].get<bool>();
  }
  // Seconds, optional (0 when absent).
  double seconds(const char* key) const {
    if (!state_.contains(key)) return 0;
    const nlohmann::json& v = state_[key];
    require(v.is_number() && std::isfinite(v.get<double>()) && v.get<double>() >= 0,
            where() + "'" + key + "' must be a number of seconds, zero or more");
    return v.get<double>();
  }
  std::string text(const char* key) const {
    require(state_.contains(key) && state_[key].is_string() && !state_[key].get<std::string>().empty(),
            where() + "'" + key + "' must be a non-empty string");
    return state_[key].get<std::string>();
  }

 private:
  std::string where_;
  nlohmann::json state_;
};

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

// The state's number must be the one its directory is named for (a copied or edited state.json
// would otherwise resume at another point than the weights beside it).
void require_matching_number(const fs::path& dir, const CheckpointNaming& naming, int64_t number, const char* key) {
  const std::optional<int64_t> named = checkpoint_number(dir.filename().string(), naming);
  require(!named || *named == number, (dir / "state.json").string() + ": '" + key + "' is " + std::to_string(number) +
                                          " but the directory is " + dir.filename().string());
}

}  // namespace

fs::path checkpoint_dir(const fs::path& out_dir, const CheckpointNaming& naming, int64_t number) {
  char digits[32];
  std::snprintf(digits, sizeof digits, "%0*lld", naming.digits, (long long)number);
  return out_dir / "checkpoints" / (std::string(naming.prefix) + digits);
}

std::string checkpoint_shard_name(int rank) {
  char name[40];
  std::snprintf(name, sizeof name, "rank-%05d.safetensors", rank);
  return name;
}

CheckpointManifest read_checkpoint_manifest(const fs::path& dir) {
  const fs::path file = dir / kCheckpointManifest;
  const CheckedFields fields(file);
  CheckpointManifest m;
  m.world = int(fields.integer("world", 1, 1 << 20));
  m.tp = int(fields.integer("tp", 1, m.world));
  m.ep = int(fields.integer("ep", 1, m.world));
  m.shard_optimizer = fields.flag("shard_optimizer");
  require(m.world % (m.tp * m.ep) == 0, fields.where() + "'tp' x 'ep' must divide 'world'");
  const nlohmann::json& shards = fields.json().contains("shards") ? fields.json()["shards"] : nlohmann::json();
  require(shards.is_array() && shards.size() == size_t(m.world),
          fields.where() + "'shards' must be a list of 'world' (" + std::to_string(m.world) + ") shards");
  for (size_t r = 0; r < shards.size(); ++r) {
    const CheckedFields shard(fields.where() + "shards[" + std::to_string(r) + "]: ", shards[r]);
    // The file name is the rank's, never taken as given: a manifest cannot point outside its directory.
    require(shard.integer("rank", 0, m.world - 1) == int64_t(r), shard.where() + "'rank' must be " + std::to_string(r));
    require(shard.text("file") == checkpoint_shard_name(int(r)),
            shard.where() + "'file' must be " + checkpoint_shard_name(int(r)));
    m.shards.push_back({checkpoint_shard_name(int(r)), int(r), shard.integer("bytes", 0, kMax)});
  }
  return m;
}

std::optional<std::string> checkpoint_defect(const fs::path& dir) {
  if (!fs::is_regular_file(dir / "state.json")) return "state.json is missing";
  if (!fs::exists(dir / kCheckpointManifest)) {
    for (const char* f : {"model.safetensors", "optimizer.safetensors"})
      if (!fs::is_regular_file(dir / f)) return std::string(f) + " is missing";
    return std::nullopt;
  }
  try {
    for (const CheckpointShard& shard : read_checkpoint_manifest(dir).shards) {
      const fs::path file = dir / shard.file;
      if (!fs::is_regular_file(file)) return shard.file + " is missing";
      const auto bytes = int64_t(fs::file_size(file));
      if (bytes != shard.bytes)
        return shard.file + " holds " + std::to_string(bytes) + " bytes, " + kCheckpointManifest + " says " +
               std::to_string(shard.bytes) + (bytes < shard.bytes ? " (truncated)" : "");
    }
  } catch (const Error& e) {
    return e.what();
  }
  return std::nullopt;
}

namespace {

// The newest complete checkpoint directory, and the newest incomplete one newer than it with what it lacks.
struct CheckpointScan {
  std::optional<fs::path> complete;
  std::optional<std::pair<fs::path, std::string>> newer_incomplete;
};
CheckpointScan scan_checkpoints(const fs::path& out_dir, const CheckpointNaming& naming) {
  const fs::path root = out_dir / "checkpoints";
  std::map<int64_t, fs::path> numbered;
  if (fs::is_directory(root))
    for (const auto& entry : fs::directory_iterator(root))
      if (const std::optional<int64_t> number = checkpoint_number(entry.path().filename().string(), naming);
          number && entry.is_directory())
        numbered[*number] = entry.path();
  CheckpointScan scan;
  std::vector<std::string> skipped;
  for (auto it = numbered.rbegin(); it != numbered.rend(); ++it) {
    const std::optional<std::string> defect = checkpoint_defect(it->second);
    if (!defect) {
      scan.complete = it->second;
      break;
    }
    skipped.push_back(it->second.string() + ": " + *defect);
    if (!scan.newer_incomplete) scan.newer_incomplete = {it->second, *defect};
  }
  // Without a complete one, the caller's error names the newest incomplete one instead.
  if (scan.complete)
    for (const std::string& s : skipped) log_info("skipping incomplete checkpoint " + s);
  return scan;
}

}  // namespace

std::optional<fs::path> newest_checkpoint_dir(const fs::path& out_dir, const CheckpointNaming& naming) {
  return scan_checkpoints(out_dir, naming).complete;
}

std::optional<fs::path> starting_checkpoint_dir(const fs::path& out_dir, bool resume, const CheckpointNaming& naming) {
  const CheckpointScan scan = resume ? scan_checkpoints(out_dir, naming) : CheckpointScan{};
  if (!scan.complete) {
    const bool has_run = fs::exists(out_dir / "log.csv") ||
                         (fs::is_directory(out_dir / "checkpoints") && !fs::is_empty(out_dir / "checkpoints"));
    const std::string incomplete =
        scan.newer_incomplete ? " (" + scan.newer_incomplete->first.string() + ": " + scan.newer_incomplete->second + ")" : "";
    require(!has_run, out_dir.string() + (resume ? " has a log but no complete checkpoint to resume from" + incomplete
                                                 : " already holds a run: pass --resume to continue it") +
                          "; choose another --out (or move that directory away)");
  }
  return scan.complete;
}

void keep_log_rows(const fs::path& csv, const std::string& header, int64_t last, const std::string& earlier_header) {
  const auto columns = std::count(header.begin(), header.end(), ',') + 1;
  std::vector<std::string> keep{header};
  if (std::ifstream in(csv); in) {
    std::string line;
    std::getline(in, line);
    require(line == header || (!earlier_header.empty() && line == earlier_header && header.rfind(line + ",", 0) == 0),
            csv.string() + " has other columns than this run writes (" + header +
                "): a log of another run? choose another --out");
    const auto written = std::count(line.begin(), line.end(), ',') + 1;
    while (std::getline(in, line)) {
      if (std::count(line.begin(), line.end(), ',') + 1 != written) continue;
      char* end = nullptr;
      const long long number = std::strtoll(line.c_str(), &end, 10);
      if (end != line.c_str() && *end == ',' && number <= last) keep.push_back(line + std::string(size_t(columns - written), ','));
    }
  }
  write_file_atomically(csv, [&](std::ostream& out) {
    for (const auto& line : keep) out << line << "\n";
  });
}

CheckpointInfo read_checkpoint_state(const fs::path& dir) {
  const CheckedFields state(dir / "state.json");
  const std::string where = state.where();
  CheckpointInfo s;
  s.dir = dir;
  s.step = state.integer("step", 1, kMax);
  s.tokens = state.integer("tokens", 0, kMax);
  s.elapsed_s = state.seconds("elapsed_s");
  const nlohmann::json& j = state.json();
  require(j.contains("config") && j["config"].is_object(), where + "'config' must be an object");
  try {
    s.config = parse_model_config(j["config"]);
  } catch (const Error& e) {
    throw Error(where + "config: " + e.what());
  } catch (const nlohmann::json::exception&) {
    throw Error(where + "config: malformed model description");
  }
  if (j.contains("settings")) {
    // The settings must be ones a run could have been started with: known keys of the right types
    // (with_settings), in range together (check_options). The output directory is not a setting,
    // and older checkpoints may lack a data path: given here so that only the stored values count.
    TrainOptions base;
    base.out_dir = dir.parent_path().parent_path();
    base.data_dir = "data";
    try {
      check_options(with_settings(base, j["settings"]));
    } catch (const Error& e) {
      throw Error(where + "settings: " + e.what());
    }
    s.settings = j["settings"];
  }
  return s;
}

namespace {

CheckpointInfo read_train_checkpoint(const fs::path& dir) {
  CheckpointInfo info = read_checkpoint_state(dir);
  require_matching_number(dir, kTrainCheckpoints, info.step, "step");
  return info;
}

}  // namespace

std::optional<CheckpointInfo> newest_checkpoint(const fs::path& out_dir) {
  const auto dir = newest_checkpoint_dir(out_dir, kTrainCheckpoints);
  if (!dir) return std::nullopt;
  return read_train_checkpoint(*dir);
}

std::optional<CheckpointInfo> starting_checkpoint(const fs::path& out_dir, bool resume) {
  const auto dir = starting_checkpoint_dir(out_dir, resume, kTrainCheckpoints);
  if (!dir) return std::nullopt;
  return read_train_checkpoint(*dir);
}

void check_resume(const TrainOptions& o, const CheckpointInfo& checkpoint) {
  if (checkpoint.settings.is_null()) {
    log_info(checkpoint.dir.string() + " predates stored settings: the command line's settings are used");
  } else {
    const nlohmann::json now = training_settings(o), then = training_settings(with_settings(o, checkpoint.settings));
    std::string differences;
    for (const auto& [key, value] : then.items())
      if (now[key] != value && !free_setting(key))
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

SelfPlayState read_selfplay_state(const fs::path& dir) {
  const CheckedFields state(dir / "state.json");
  SelfPlayState s;
  s.dir = dir;
  s.iteration = int(state.integer("iteration", 1, std::numeric_limits<int>::max()));
  s.optimizer_steps = state.integer("optimizer_steps", 0, kMax);
  s.elapsed_s = state.seconds("elapsed_s");
  s.start_model = state.text("start_model");
  return s;
}

std::optional<SelfPlayState> starting_selfplay_state(const fs::path& out_dir, bool resume, const fs::path& model_dir) {
  const std::optional<fs::path> dir = starting_checkpoint_dir(out_dir, resume, kSelfPlayCheckpoints);
  if (!dir) return std::nullopt;
  SelfPlayState s = read_selfplay_state(*dir);
  require_matching_number(*dir, kSelfPlayCheckpoints, s.iteration, "iteration");
  const std::string model = fs::absolute(model_dir).lexically_normal().string();
  require(s.start_model == model, "--resume: " + (*dir / "state.json").string() + " says this run started from " +
                                      s.start_model + ", not " + model + "; give that model, or choose another --out");
  return s;
}

}  // namespace crossmoe::train
