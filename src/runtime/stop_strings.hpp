#pragma once
// Stop strings for streamed text (generate --stop): text goes in as the decoder produces it and
// comes out only once it cannot be the start of a stop string, so a stop string split across
// tokens is caught and nothing from it on is ever shown.
#include <string>
#include <string_view>
#include <vector>

namespace crossmoe {

class StopStrings {
 public:
  explicit StopStrings(std::vector<std::string> stops);  // empty strings are ignored
  // The part of everything pushed so far that is now certain to come before any stop string.
  std::string push(std::string_view text);
  // At the end of generation: the text still held back (none once stopped).
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;  // pushed, not yet returned: a tail that may begin a stop string
  bool stopped_ = false;
};

}  // namespace crossmoe
