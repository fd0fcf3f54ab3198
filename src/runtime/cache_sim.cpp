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

SimulatedCache simulate_cache(const RoutingTrace& trace, int slots, std::optional<EvictionPolicy> policy) {
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
  EvictionTracker tracker(policy.value_or(EvictionPolicy::Lru), trace.experts, trace.experts);
  std::vector<char> resident(trace.experts, 0), in_step(trace.experts, 0);
  std::vector<int64_t> resident_next(trace.experts, INT64_MAX);
  std::vector<int> held;
  SimulatedCache result;
  int64_t position = 0;
  for (const std::vector<int>& step : trace.steps) {
    for (int key : step) in_step[key] = 1;
    // As the cache does: the step's resident experts first, then the missing ones.
    std::vector<int> order;
    for (int key : step)
      if (resident[key]) order.push_back(key);
    for (int key : step)
      if (!resident[key]) order.push_back(key);
    for (int key : order) {
      if (resident[key]) {
        ++result.hits;
      } else {
        ++result.misses;
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
    position += int64_t(step.size());
  }
  return result;
}

}  // namespace crossmoe
