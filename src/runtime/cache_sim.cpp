#include "runtime/cache_sim.hpp"

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "util/error.hpp"

namespace crossmoe {

RoutingTrace read_routing_trace(const std::filesystem::path& path) {
  require_regular_file(path);
  std::ifstream in(path);
  require(in.good(), "cannot open " + path.string());
  RoutingTrace trace;
  std::map<std::pair<int, int>, int> key_of;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    const std::string where = path.string() + " line " + std::to_string(number) + ": ";
    std::vector<int> step;
    try {
      const nlohmann::json record = nlohmann::json::parse(line);
      trace.layer.push_back(record.at("layer").get<int>());
      trace.position.push_back(record.value("position", 0));
      require(trace.layer.back() >= 0, "negative layer");
      std::vector<std::pair<int, int>> ids;
      for (const auto& e : record.at("experts")) ids.emplace_back(e.at("layer").get<int>(), e.at("expert").get<int>());
      // In the order the forward pass acquires them: by owner layer, then index.
      std::sort(ids.begin(), ids.end());
      require(std::adjacent_find(ids.begin(), ids.end()) == ids.end(), "an expert appears twice in one record");
      for (const auto& id : ids) step.push_back(key_of.emplace(id, int(key_of.size())).first->second);
    } catch (const nlohmann::json::exception& e) {
      throw Error(where + "not a routing record {\"layer\", \"experts\": [{\"layer\", \"expert\"}, ...]}: " + e.what());
    } catch (const Error& e) {
      throw Error(where + e.what());
    }
    trace.accesses += int64_t(step.size());
    trace.widest_step = std::max(trace.widest_step, step.size());
    trace.steps.push_back(std::move(step));
  }
  require(!trace.steps.empty(), path.string() + ": no routing records");
  trace.experts = int(key_of.size());
  return trace;
}

KeyLayers RoutingTrace::key_layers() const {
  KeyLayers k;
  k.of_key.resize(experts);
  for (size_t i = 0; i < steps.size(); ++i) {
    k.layers = std::max(k.layers, (i < layer.size() ? layer[i] : 0) + 1);
    for (int key : steps[i]) k.of_key[key].push_back(i < layer.size() ? layer[i] : 0);
  }
  for (auto& layers : k.of_key) {
    std::sort(layers.begin(), layers.end());
    layers.erase(std::unique(layers.begin(), layers.end()), layers.end());
  }
  // Each step picks its experts among those its layer can route to.
  std::vector<int> candidates(k.layers, 0);
  for (const auto& layers : k.of_key)
    for (int l : layers) ++candidates[l];
  double rate = 0;
  int steps_counted = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const int l = i < layer.size() ? layer[i] : 0;
    if (candidates[l] == 0) continue;
    rate += double(steps[i].size()) / candidates[l];
    ++steps_counted;
  }
  k.prior_rate = steps_counted ? rate / steps_counted : 0.0;
  return k;
}

SimulatedCache simulate_cache(const RoutingTrace& trace, int slots, std::optional<EvictionPolicy> policy,
                              const SimulateOptions& options) {
  require(slots >= int(trace.widest_step), "a cache of " + std::to_string(slots) + " experts cannot hold one step's " +
                                               std::to_string(trace.widest_step));
  // For Belady's rule: the position of each access's next use of the same expert.
  std::vector<int64_t> next_use;
  if (!policy) {
    std::vector<int64_t> upcoming(trace.experts, INT64_MAX);
    next_use.resize(size_t(trace.accesses));
    int64_t i = trace.accesses;
    for (auto step = trace.steps.rbegin(); step != trace.steps.rend(); ++step)
      for (auto key = step->rbegin(); key != step->rend(); ++key) {
        next_use[size_t(--i)] = upcoming[*key];
        upcoming[*key] = i;
      }
  }
  EvictionTracker tracker(policy.value_or(EvictionPolicy::Lru), trace.experts, trace.experts,
                          policy == EvictionPolicy::NextUse ? trace.key_layers() : KeyLayers());
  const auto layer_of = [&](size_t i) { return i < trace.layer.size() ? trace.layer[i] : 0; };
  const auto position_of = [&](size_t i) { return i < trace.position.size() ? trace.position[i] : 0; };
  std::vector<char> resident(trace.experts, 0), in_step(trace.experts, 0), in_next(trace.experts, 0);
  std::vector<int64_t> resident_next(trace.experts, INT64_MAX);
  std::vector<int> held;
  SimulatedCache result;
  int64_t position = 0;
  bool counting = false;
  for (size_t at = 0; at < trace.steps.size(); ++at) {
    const std::vector<int>& step = trace.steps[at];
    counting = counting || position_of(at) >= options.from_position;
    tracker.begin_step(layer_of(at));
    const bool next_known = options.next_step_known && at + 1 < trace.steps.size() &&
                            position_of(at + 1) == position_of(at) && layer_of(at + 1) > layer_of(at);
    const std::vector<int> next = next_known ? trace.steps[at + 1] : std::vector<int>();
    tracker.expect_next(next);
    for (int key : next) in_next[key] = 1;
    for (int key : step) in_step[key] = 1;
    // As the cache does: the step's resident experts first, then the missing ones.
    std::vector<int> order;
    for (int key : step)
      if (resident[key]) order.push_back(key);
    for (int key : step)
      if (!resident[key]) order.push_back(key);
    for (int key : order) {
      if (resident[key]) {
        result.hits += counting;
      } else {
        result.misses += counting;
        if (int(held.size()) == slots) {
          int victim = -1;
          for (int i = 0; i < int(held.size()); ++i) {
            const int k = held[i];
            if (in_step[k]) continue;
            if (victim < 0) {
              victim = i;
              continue;
            }
            const int v = held[victim];
            // As the cache does: what the next step is known to use goes last, under any policy.
            if (in_next[k] != in_next[v]) {
              if (in_next[v]) victim = i;
              continue;
            }
            if (policy ? tracker.evict_before(k, v) : resident_next[k] > resident_next[v]) victim = i;
          }
          resident[held[victim]] = 0;
          held[victim] = held.back();
          held.pop_back();
        }
        resident[key] = 1;
        held.push_back(key);
      }
      tracker.use(key);
      if (!policy) resident_next[key] = next_use[size_t(position + (std::find(step.begin(), step.end(), key) - step.begin()))];
    }
    for (int key : step) in_step[key] = 0;
    for (int key : next) in_next[key] = 0;
    position += int64_t(step.size());
  }
  return result;
}

}  // namespace crossmoe
