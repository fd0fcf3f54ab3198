#include "tokenizer/chat_template.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "tokenizer/unicode.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

namespace crossmoe {

using Json = nlohmann::ordered_json;

namespace {

using namespace chat_template_limits;

// A template value: a JSON value, or Jinja's "undefined". A value read from a variable borrows
// the variable's JSON (ref) instead of copying it: templates read `messages` for every message,
// and copies made rendering quadratic in the conversation. Borrowed values live while one
// expression is evaluated; statements store copies (Renderer::stored).
struct Value {
  Json owned;
  bool undefined = false;
  const Json* ref = nullptr;
  const Json& j() const { return ref ? *ref : owned; }
  static Value undef() { return Value{Json(), true}; }
  static Value borrow(const Json& j) { return Value{Json(), false, &j}; }
};

[[noreturn]] void fail(const std::string& message) { throw Error("chat template: " + message); }

bool truthy(const Value& v) {
  const Json& j = v.j();
  if (v.undefined || j.is_null()) return false;
  if (j.is_boolean()) return j.get<bool>();
  if (j.is_number_integer()) return j.get<int64_t>() != 0;
  if (j.is_number()) return j.get<double>() != 0.0;
  if (j.is_string()) return !j.get_ref<const std::string&>().empty();
  return !j.empty();
}

// ---- Python-compatible printing

std::string py_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[32];
  for (int precision = 1; precision <= 17; ++precision) {  // shortest repr that round-trips
    std::snprintf(buf, sizeof buf, "%.*g", precision, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string s = buf;
  const size_t e = s.find('e');
  if (e != std::string::npos) {  // Python writes 1e-05 and 1e+20
    std::string mant = s.substr(0, e), exp = s.substr(e + 1);
    const char sign = exp[0] == '-' ? '-' : '+';
    if (exp[0] == '-' || exp[0] == '+') exp.erase(0, 1);
    while (exp.size() > 1 && exp[0] == '0') exp.erase(0, 1);
    if (exp.size() < 2) exp.insert(0, "0");
    return mant + "e" + sign + exp;
  }
  if (s.find('.') == std::string::npos) s += ".0";
  return s;
}

std::string json_string(const std::string& s) {  // json.dumps(s, ensure_ascii=False)
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += char(c);
        }
    }
  }
  return out + "\"";
}

// json.dumps(x, ensure_ascii=False, indent=indent) with Python's default separators.
void to_json(const Json& j, int indent, int depth, bool sort_keys, std::string& out) {
  const auto newline = [&](int d) {
    if (indent >= 0) out += "\n" + std::string(size_t(indent * d), ' ');
  };
  if (j.is_null()) out += "null";
  else if (j.is_boolean()) out += j.get<bool>() ? "true" : "false";
  else if (j.is_number_integer()) out += std::to_string(j.get<int64_t>());
  else if (j.is_number_unsigned()) out += std::to_string(j.get<uint64_t>());
  else if (j.is_number()) out += py_float(j.get<double>());
  else if (j.is_string()) out += json_string(j.get_ref<const std::string&>());
  else if (j.is_array()) {
    if (j.empty()) {
      out += "[]";
      return;
    }
    out += "[";
    for (size_t i = 0; i < j.size(); ++i) {
      if (i) out += indent >= 0 ? "," : ", ";
      newline(depth + 1);
      to_json(j[i], indent, depth + 1, sort_keys, out);
    }
    newline(depth);
    out += "]";
  } else {
    if (j.empty()) {
      out += "{}";
      return;
    }
    std::vector<std::string> keys;
    for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
    if (sort_keys) std::sort(keys.begin(), keys.end());
    out += "{";
    for (size_t i = 0; i < keys.size(); ++i) {
      if (i) out += indent >= 0 ? "," : ", ";
      newline(depth + 1);
      out += json_string(keys[i]) + ": ";
      to_json(j.at(keys[i]), indent, depth + 1, sort_keys, out);
    }
    newline(depth);
    out += "}";
  }
}

std::string py_repr(const Json& j);

std::string py_str(const Value& v) {  // str(x), as {{ x }} prints it
  if (v.undefined) return "";
  const Json& j = v.j();
  if (j.is_string()) return j.get<std::string>();
  return py_repr(j);
}

std::string py_repr(const Json& j) {
  if (j.is_null()) return "None";
  if (j.is_boolean()) return j.get<bool>() ? "True" : "False";
  if (j.is_number_integer()) return std::to_string(j.get<int64_t>());
  if (j.is_number_unsigned()) return std::to_string(j.get<uint64_t>());
  if (j.is_number()) return py_float(j.get<double>());
  if (j.is_string()) {
    const std::string& s = j.get_ref<const std::string&>();
    const char q = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
    std::string out(1, q);
    for (char c : s) {
      if (c == q || c == '\\') out += '\\', out += c;
      else if (c == '\n') out += "\\n";
      else if (c == '\t') out += "\\t";
      else if (c == '\r') out += "\\r";
      else out += c;
    }
    return out + q;
  }
  std::string out;
  if (j.is_array()) {
    out = "[";
    for (size_t i = 0; i < j.size(); ++i) out += (i ? ", " : "") + py_repr(j[i]);
    return out + "]";
  }
  out = "{";
  bool first = true;
  for (auto it = j.begin(); it != j.end(); ++it, first = false)
    out += (first ? "" : ", ") + py_repr(Json(it.key())) + ": " + py_repr(it.value());
  return out + "}";
}

// ---- Python string helpers

bool is_py_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

// The characters argument of strip() and the separator of split(): absent, none or a string.
const std::string* optional_string_argument(const Value* v, const char* what) {
  if (!v || v->undefined || v->j().is_null()) return nullptr;
  if (!v->j().is_string()) fail(std::string(what) + " must be a string, got " + py_repr(v->j()));
  return &v->j().get_ref<const std::string&>();
}

std::string py_strip(const std::string& s, const Value* chars_arg, bool left, bool right) {
  const std::string* chars = optional_string_argument(chars_arg, "strip() characters");
  const auto strip_char = [&](char c) {
    if (!chars) return is_py_space(static_cast<unsigned char>(c));
    return chars->find(c) != std::string::npos;
  };
  size_t b = 0, e = s.size();
  while (left && b < e && strip_char(s[b])) ++b;
  while (right && e > b && strip_char(s[e - 1])) --e;
  return s.substr(b, e - b);
}

Json py_split(const std::string& s, const Value* sep_arg, int64_t maxsplit) {
  Json out = Json::array();
  const std::string* sep = optional_string_argument(sep_arg, "split() separator");
  if (!sep) {  // runs of whitespace, no empty strings
    size_t i = 0;
    while (i < s.size()) {
      while (i < s.size() && is_py_space(static_cast<unsigned char>(s[i]))) ++i;
      if (i >= s.size()) break;
      size_t e = i;
      if (maxsplit >= 0 && int64_t(out.size()) >= maxsplit) e = s.size();
      else
        while (e < s.size() && !is_py_space(static_cast<unsigned char>(s[e]))) ++e;
      out.push_back(maxsplit >= 0 && int64_t(out.size()) >= maxsplit ? py_strip(s.substr(i), nullptr, false, true)
                                                                      : s.substr(i, e - i));
      i = e;
    }
    return out;
  }
  const std::string& d = *sep;
  if (d.empty()) fail("split() separator is empty");
  size_t at = 0;
  for (size_t hit; (maxsplit < 0 || int64_t(out.size()) < maxsplit) && (hit = s.find(d, at)) != std::string::npos;
       at = hit + d.size())
    out.push_back(s.substr(at, hit - at));
  out.push_back(s.substr(at));
  return out;
}

// Python indexing of strings is by code point.
size_t code_point_length(const std::string& s, size_t i) {
  const size_t len = unicode::valid_sequence_length(s, i);
  return len == 0 ? 1 : len;
}

size_t count_code_points(const std::string& s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size(); i += code_point_length(s, i)) ++n;
  return n;
}

std::vector<std::string> code_points(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const size_t len = code_point_length(s, i);
    out.push_back(s.substr(i, len));
    i += len;
  }
  return out;
}

// ---- lexer for expressions

enum class Tok { Name, String, Int, Float, Op, End };
struct Token {
  Tok type;
  std::string text;
};

std::vector<Token> lex(const std::string& src) {
  std::vector<Token> out;
  size_t i = 0;
  while (i < src.size()) {
    const char c = src[i];
    if (is_py_space(static_cast<unsigned char>(c))) {
      ++i;
      continue;
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t e = i;
      while (e < src.size() && (std::isalnum(static_cast<unsigned char>(src[e])) || src[e] == '_')) ++e;
      out.push_back({Tok::Name, src.substr(i, e - i)});
      i = e;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t e = i;
      bool is_float = false;
      while (e < src.size() && (std::isdigit(static_cast<unsigned char>(src[e])) || src[e] == '_' ||
                                (src[e] == '.' && e + 1 < src.size() && std::isdigit(static_cast<unsigned char>(src[e + 1]))))) {
        is_float |= src[e] == '.';
        ++e;
      }
      if (e < src.size() && (src[e] == 'e' || src[e] == 'E')) {  // exponent: 1e-05
        size_t k = e + 1;
        if (k < src.size() && (src[k] == '-' || src[k] == '+')) ++k;
        if (k < src.size() && std::isdigit(static_cast<unsigned char>(src[k]))) {
          while (k < src.size() && std::isdigit(static_cast<unsigned char>(src[k]))) ++k;
          e = k;
          is_float = true;
        }
      }
      std::string num = src.substr(i, e - i);
      num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
      out.push_back({is_float ? Tok::Float : Tok::Int, num});
      i = e;
    } else if (c == '\'' || c == '"') {
      std::string s;
      size_t e = i + 1;
      for (; e < src.size() && src[e] != c; ++e) {
        if (src[e] != '\\' || e + 1 >= src.size()) {
          s += src[e];
          continue;
        }
        const char n = src[++e];
        switch (n) {
          case 'n': s += '\n'; break;
          case 't': s += '\t'; break;
          case 'r': s += '\r'; break;
          case '\\': s += '\\'; break;
          case '\'': s += '\''; break;
          case '"': s += '"'; break;
          default: s += '\\', s += n;
        }
      }
      if (e >= src.size()) fail("unterminated string in '" + src + "'");
      out.push_back({Tok::String, s});
      i = e + 1;
    } else {
      static const char* two[] = {"==", "!=", "<=", ">=", "//", "**"};
      std::string op(1, c);
      for (const char* t : two)
        if (src.compare(i, 2, t) == 0) op = t;
      if (op.size() == 1 && std::string("+-*/%~<>=()[]{}.,:|").find(c) == std::string::npos)
        fail(std::string("unexpected character '") + c + "'");
      out.push_back({Tok::Op, op});
      i += op.size();
    }
  }
  out.push_back({Tok::End, ""});
  return out;
}

}  // namespace

// ---- AST

struct Expr {
  virtual ~Expr() = default;
  virtual void children(std::vector<const Expr*>&) const {}
  int height = 1;  // evaluating and destroying the tree recurse once per level
};
using ExprPtr = std::unique_ptr<Expr>;

struct ChatTemplate::Node {
  virtual ~Node() = default;
};
using NodePtr = std::unique_ptr<ChatTemplate::Node>;

namespace {

struct Literal : Expr {
  Json value;
};
struct Variable : Expr {
  std::string name;
};
struct Attribute : Expr {
  ExprPtr object;
  std::string name;
  void children(std::vector<const Expr*>& out) const override { out = {object.get()}; }
};
struct Subscript : Expr {
  ExprPtr object, index;
  void children(std::vector<const Expr*>& out) const override { out = {object.get(), index.get()}; }
};
struct SliceExpr : Expr {
  ExprPtr object, start, stop, step;
  void children(std::vector<const Expr*>& out) const override { out = {object.get(), start.get(), stop.get(), step.get()}; }
};
struct CallExpr : Expr {
  ExprPtr callee;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  void children(std::vector<const Expr*>& out) const override {
    out = {callee.get()};
    for (const auto& a : args) out.push_back(a.get());
    for (const auto& [k, a] : kwargs) out.push_back(a.get());
  }
};
struct FilterExpr : Expr {
  ExprPtr value;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  void children(std::vector<const Expr*>& out) const override {
    out = {value.get()};
    for (const auto& a : args) out.push_back(a.get());
    for (const auto& [k, a] : kwargs) out.push_back(a.get());
  }
};
struct TestExpr : Expr {
  ExprPtr value;
  std::string name;
  std::vector<ExprPtr> args;
  bool negated = false;
  void children(std::vector<const Expr*>& out) const override {
    out = {value.get()};
    for (const auto& a : args) out.push_back(a.get());
  }
};
struct UnaryExpr : Expr {
  std::string op;
  ExprPtr value;
  void children(std::vector<const Expr*>& out) const override { out = {value.get()}; }
};
struct BinaryExpr : Expr {
  std::string op;
  ExprPtr left, right;
  void children(std::vector<const Expr*>& out) const override { out = {left.get(), right.get()}; }
};
struct CondExpr : Expr {
  ExprPtr then, cond, otherwise;
  void children(std::vector<const Expr*>& out) const override { out = {then.get(), cond.get(), otherwise.get()}; }
};
struct ListExpr : Expr {
  std::vector<ExprPtr> items;
  void children(std::vector<const Expr*>& out) const override {
    for (const auto& i : items) out.push_back(i.get());
  }
};
struct DictExpr : Expr {
  std::vector<std::pair<ExprPtr, ExprPtr>> items;
  void children(std::vector<const Expr*>& out) const override {
    for (const auto& [k, v] : items) out.push_back(k.get()), out.push_back(v.get());
  }
};

[[noreturn]] void fail_nesting() {
  fail("the template nests deeper than " + std::to_string(kMaxNesting) +
       " levels (brackets, operators, filters or blocks)");
}

// Counts one level of the parser's recursion for as long as it lives: thousands of brackets or
// `not`s must be an error, not a stack overflow.
class NestingGuard {
 public:
  explicit NestingGuard(int& depth) : depth_(depth) {
    if (++depth_ > kMaxNesting) --depth_, fail_nesting();
  }
  ~NestingGuard() { --depth_; }
  NestingGuard(const NestingGuard&) = delete;
  NestingGuard& operator=(const NestingGuard&) = delete;

 private:
  int& depth_;
};

// Gives a finished node its height; a chain such as 1+1+...+1 is built in a loop, not by
// recursion, so its height is checked here.
template <class T>
std::unique_ptr<T> sealed(std::unique_ptr<T> node) {
  std::vector<const Expr*> kids;
  node->children(kids);
  for (const Expr* k : kids)
    if (k) node->height = std::max(node->height, k->height + 1);
  if (node->height > kMaxNesting) fail_nesting();
  return node;
}

class ExprParser {
 public:
  explicit ExprParser(const std::string& src) : tokens_(lex(src)), src_(src) {}
  ExprPtr parse_all() {
    ExprPtr e = expression();
    expect_end();
    return e;
  }
  ExprPtr expression() { return conditional(); }
  bool at_end() const { return peek().type == Tok::End; }
  void expect_end() {
    if (!at_end()) fail("unexpected '" + peek().text + "' in '" + src_ + "'");
  }
  const Token& peek(int k = 0) const { return tokens_[std::min(pos_ + k, tokens_.size() - 1)]; }
  bool accept_op(const std::string& op) {
    if (peek().type == Tok::Op && peek().text == op) return ++pos_, true;
    return false;
  }
  bool accept_name(const std::string& name) {
    if (peek().type == Tok::Name && peek().text == name) return ++pos_, true;
    return false;
  }
  void expect_op(const std::string& op) {
    if (!accept_op(op)) fail("expected '" + op + "' in '" + src_ + "'");
  }
  std::string name() {
    if (peek().type != Tok::Name) fail("expected a name in '" + src_ + "'");
    return tokens_[pos_++].text;
  }

  ExprPtr conditional() {
    NestingGuard level(nesting_);
    ExprPtr e = or_expr();
    while (accept_name("if")) {
      auto c = std::make_unique<CondExpr>();
      c->then = std::move(e);
      c->cond = or_expr();
      if (accept_name("else")) c->otherwise = conditional();
      e = sealed(std::move(c));
    }
    return e;
  }

 private:
  ExprPtr binary(ExprPtr left, const std::string& op, ExprPtr right) {
    auto b = std::make_unique<BinaryExpr>();
    b->op = op;
    b->left = std::move(left);
    b->right = std::move(right);
    return sealed(std::move(b));
  }
  ExprPtr or_expr() {
    ExprPtr e = and_expr();
    while (accept_name("or")) e = binary(std::move(e), "or", and_expr());
    return e;
  }
  ExprPtr and_expr() {
    ExprPtr e = not_expr();
    while (accept_name("and")) e = binary(std::move(e), "and", not_expr());
    return e;
  }
  ExprPtr not_expr() {
    if (accept_name("not")) {
      NestingGuard level(nesting_);
      auto u = std::make_unique<UnaryExpr>();
      u->op = "not";
      u->value = not_expr();
      return sealed(std::move(u));
    }
    return compare();
  }
  ExprPtr compare() {
    ExprPtr e = math1();
    while (true) {
      static const std::set<std::string> ops = {"==", "!=", "<", ">", "<=", ">="};
      if (peek().type == Tok::Op && ops.count(peek().text)) {
        const std::string op = tokens_[pos_++].text;
        e = binary(std::move(e), op, math1());
      } else if (accept_name("in")) {
        e = binary(std::move(e), "in", math1());
      } else if (peek().type == Tok::Name && peek().text == "not" && peek(1).type == Tok::Name && peek(1).text == "in") {
        pos_ += 2;
        e = binary(std::move(e), "not in", math1());
      } else {
        return e;
      }
    }
  }
  ExprPtr math1() {
    ExprPtr e = concat();
    while (peek().type == Tok::Op && (peek().text == "+" || peek().text == "-")) {
      const std::string op = tokens_[pos_++].text;
      e = binary(std::move(e), op, concat());
    }
    return e;
  }
  ExprPtr concat() {
    ExprPtr e = math2();
    while (accept_op("~")) e = binary(std::move(e), "~", math2());
    return e;
  }
  ExprPtr math2() {
    ExprPtr e = power();
    while (peek().type == Tok::Op && (peek().text == "*" || peek().text == "/" || peek().text == "//" || peek().text == "%")) {
      const std::string op = tokens_[pos_++].text;
      e = binary(std::move(e), op, power());
    }
    return e;
  }
  ExprPtr power() {
    ExprPtr e = unary();
    while (accept_op("**")) e = binary(std::move(e), "**", unary());
    return e;
  }
  ExprPtr unary() {
    if (peek().type == Tok::Op && (peek().text == "-" || peek().text == "+")) {
      NestingGuard level(nesting_);
      auto u = std::make_unique<UnaryExpr>();
      u->op = tokens_[pos_++].text;
      u->value = unary();
      return sealed(std::move(u));
    }
    return filters(postfix(primary()));
  }
  void call_args(std::vector<ExprPtr>& args, std::vector<std::pair<std::string, ExprPtr>>& kwargs) {
    if (accept_op(")")) return;
    do {
      if (peek().type == Tok::Name && peek(1).type == Tok::Op && peek(1).text == "=") {
        std::string key = name();
        expect_op("=");
        kwargs.push_back({key, expression()});
      } else {
        args.push_back(expression());
      }
    } while (accept_op(","));
    expect_op(")");
  }
  ExprPtr postfix(ExprPtr e) {
    while (true) {
      if (accept_op(".")) {
        auto a = std::make_unique<Attribute>();
        a->object = std::move(e);
        a->name = name();
        e = sealed(std::move(a));
      } else if (accept_op("[")) {
        ExprPtr start, stop, step;
        bool slice = false;
        if (!(peek().type == Tok::Op && peek().text == ":")) start = expression();
        if (accept_op(":")) {
          slice = true;
          if (!(peek().type == Tok::Op && (peek().text == ":" || peek().text == "]"))) stop = expression();
          if (accept_op(":") && !(peek().type == Tok::Op && peek().text == "]")) step = expression();
        }
        expect_op("]");
        if (slice) {
          auto s = std::make_unique<SliceExpr>();
          s->object = std::move(e);
          s->start = std::move(start);
          s->stop = std::move(stop);
          s->step = std::move(step);
          e = sealed(std::move(s));
        } else {
          auto s = std::make_unique<Subscript>();
          s->object = std::move(e);
          s->index = std::move(start);
          e = sealed(std::move(s));
        }
      } else if (accept_op("(")) {
        auto c = std::make_unique<CallExpr>();
        c->callee = std::move(e);
        call_args(c->args, c->kwargs);
        e = sealed(std::move(c));
      } else {
        return e;
      }
    }
  }
  ExprPtr filters(ExprPtr e) {
    while (true) {
      if (accept_op("|")) {
        auto f = std::make_unique<FilterExpr>();
        f->value = std::move(e);
        f->name = name();
        if (accept_op("(")) call_args(f->args, f->kwargs);
        e = sealed(std::move(f));
      } else if (accept_name("is")) {
        auto t = std::make_unique<TestExpr>();
        t->value = std::move(e);
        t->negated = accept_name("not");
        t->name = name();
        if (accept_op("(")) {
          std::vector<std::pair<std::string, ExprPtr>> unused;
          call_args(t->args, unused);
        } else if (peek().type == Tok::String || peek().type == Tok::Int || peek().type == Tok::Float ||
                   (peek().type == Tok::Name && peek().text != "and" && peek().text != "or" && peek().text != "else" &&
                    peek().text != "if" && peek().text != "in" && peek().text != "not")) {
          t->args.push_back(primary());
        }
        e = sealed(std::move(t));
      } else {
        return e;
      }
    }
  }
  ExprPtr primary() {
    const Token t = peek();
    ++pos_;
    auto lit = [](Json v) {
      auto l = std::make_unique<Literal>();
      l->value = std::move(v);
      return l;
    };
    switch (t.type) {
      case Tok::String: {
        std::string s = t.text;
        while (peek().type == Tok::String) s += tokens_[pos_++].text;  // adjacent literals join
        return lit(s);
      }
      case Tok::Int: {
        errno = 0;
        const long long v = std::strtoll(t.text.c_str(), nullptr, 10);
        if (errno == ERANGE) fail("integer " + t.text + " does not fit in 64 bits");
        return lit(int64_t(v));
      }
      case Tok::Float: return lit(std::strtod(t.text.c_str(), nullptr));  // 1e999 is inf, as in Python
      case Tok::Name: {
        if (t.text == "true" || t.text == "True") return lit(true);
        if (t.text == "false" || t.text == "False") return lit(false);
        if (t.text == "none" || t.text == "None") return lit(nullptr);
        auto v = std::make_unique<Variable>();
        v->name = t.text;
        return v;
      }
      case Tok::Op:
        if (t.text == "(") {
          ExprPtr e = expression();
          if (accept_op(",")) {  // a tuple: a list for our purposes
            auto l = std::make_unique<ListExpr>();
            l->items.push_back(std::move(e));
            if (!accept_op(")")) {
              do l->items.push_back(expression());
              while (accept_op(","));
              expect_op(")");
            }
            return sealed(std::move(l));
          }
          expect_op(")");
          return e;
        }
        if (t.text == "[") {
          auto l = std::make_unique<ListExpr>();
          if (!accept_op("]")) {
            do l->items.push_back(expression());
            while (accept_op(",") && !(peek().type == Tok::Op && peek().text == "]"));
            expect_op("]");
          }
          return sealed(std::move(l));
        }
        if (t.text == "{") {
          auto d = std::make_unique<DictExpr>();
          if (!accept_op("}")) {
            do {
              ExprPtr k = expression();
              expect_op(":");
              d->items.push_back({std::move(k), expression()});
            } while (accept_op(",") && !(peek().type == Tok::Op && peek().text == "}"));
            expect_op("}");
          }
          return sealed(std::move(d));
        }
        [[fallthrough]];
      default: fail("unexpected '" + t.text + "' in '" + src_ + "'");
    }
  }

  std::vector<Token> tokens_;
  size_t pos_ = 0;
  std::string src_;
  int nesting_ = 0;
};

// ---- statements

struct TextNode : ChatTemplate::Node {
  std::string text;
};
struct OutputNode : ChatTemplate::Node {
  ExprPtr expr;
};
struct BlockNode : ChatTemplate::Node {
  std::vector<NodePtr> children;
};
struct IfNode : ChatTemplate::Node {
  std::vector<std::pair<ExprPtr, std::unique_ptr<BlockNode>>> branches;  // null condition: else
};
struct ForNode : ChatTemplate::Node {
  std::vector<std::string> targets;
  ExprPtr iterable, filter;
  std::unique_ptr<BlockNode> body, otherwise;
};
struct SetNode : ChatTemplate::Node {
  std::string name, attribute;
  ExprPtr value;
};

struct Segment {
  enum Kind { Text, Output, Statement } kind;
  std::string body;
  int line;
};

// Splits the source into text, {{ }} and {% %} (comments dropped), applying whitespace control
// as transformers configures Jinja: trim_blocks and lstrip_blocks, plus explicit - and +.
std::vector<Segment> segment(std::string src) {
  // Like Jinja's lexer: newlines become "\n", and one trailing newline is dropped
  // (keep_trailing_newline is off).
  std::string normalized;
  for (size_t k = 0; k < src.size(); ++k) {
    if (src[k] == '\r') {
      normalized += '\n';
      if (k + 1 < src.size() && src[k + 1] == '\n') ++k;
    } else {
      normalized += src[k];
    }
  }
  src = std::move(normalized);
  if (!src.empty() && src.back() == '\n') src.pop_back();
  std::vector<Segment> out;
  size_t i = 0;
  int line = 1;
  bool trim_next = false;      // a '-' on the previous tag
  bool trim_newline = false;   // trim_blocks after a block or comment tag
  std::string text;
  const auto flush_text = [&] {
    if (!text.empty()) out.push_back({Segment::Text, text, line});
    text.clear();
  };
  while (i < src.size()) {
    const size_t open = src.find('{', i);
    size_t start = open;
    while (start != std::string::npos && start + 1 < src.size() && src[start + 1] != '{' && src[start + 1] != '%' &&
           src[start + 1] != '#')
      start = src.find('{', start + 1);
    if (start == std::string::npos || start + 1 >= src.size()) start = src.size();
    std::string chunk = src.substr(i, start - i);
    if (trim_next) chunk.erase(0, chunk.find_first_not_of(" \t\r\n") == std::string::npos ? chunk.size() : chunk.find_first_not_of(" \t\r\n"));
    else if (trim_newline && !chunk.empty() && chunk[0] == '\n') chunk.erase(0, 1);
    trim_next = trim_newline = false;
    text += chunk;
    if (start >= src.size()) break;
    const char kind = src[start + 1];
    const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    const size_t end = src.find(close, start + 2);
    if (end == std::string::npos) fail("unclosed tag at line " + std::to_string(line));
    std::string inner = src.substr(start + 2, end - start - 2);
    const bool strip_before = !inner.empty() && inner[0] == '-';
    const bool keep_before = !inner.empty() && inner[0] == '+';
    if (strip_before || keep_before) inner.erase(0, 1);
    const bool strip_after = !inner.empty() && inner.back() == '-';  // in "{{-}}" the one '-' strips before only
    if (strip_after) inner.pop_back();
    if (strip_before) {
      text.erase(text.find_last_not_of(" \t\r\n") == std::string::npos ? 0 : text.find_last_not_of(" \t\r\n") + 1);
    } else if (kind != '{' && !keep_before) {
      // lstrip_blocks: spaces and tabs between a line start (or the template's start) and a
      // block or comment tag are dropped; after another tag on the same line they stay.
      const size_t nl = text.find_last_of('\n');
      const bool line_start = nl != std::string::npos || (out.empty() && i == 0);
      const size_t from = nl == std::string::npos ? 0 : nl + 1;
      if (line_start && text.find_first_not_of(" \t", from) == std::string::npos) text.erase(from);
    }
    line += int(std::count(src.begin() + std::ptrdiff_t(i), src.begin() + std::ptrdiff_t(end), '\n'));
    flush_text();
    if (kind == '{') out.push_back({Segment::Output, inner, line});
    else if (kind == '%') out.push_back({Segment::Statement, inner, line});
    trim_next = strip_after;
    trim_newline = kind != '{';
    i = end + 2;
  }
  flush_text();
  return out;
}

class TemplateParser {
 public:
  explicit TemplateParser(std::vector<Segment> segments) : segs_(std::move(segments)) {}
  std::unique_ptr<BlockNode> parse() {
    auto root = block({});
    if (pos_ < segs_.size()) fail("unexpected '" + segs_[pos_].body + "' at line " + std::to_string(segs_[pos_].line));
    return root;
  }

 private:
  static std::string keyword(const std::string& stmt) {
    ExprParser p(stmt);
    return p.peek().type == Tok::Name ? p.peek().text : "";
  }
  // Parses until a statement whose keyword is in `ends` (left unconsumed).
  std::unique_ptr<BlockNode> block(const std::set<std::string>& ends) {
    auto b = std::make_unique<BlockNode>();
    while (pos_ < segs_.size()) {
      const Segment& s = segs_[pos_];
      if (s.kind == Segment::Text) {
        auto t = std::make_unique<TextNode>();
        t->text = s.body;
        b->children.push_back(std::move(t));
        ++pos_;
        continue;
      }
      if (s.kind == Segment::Output) {
        auto o = std::make_unique<OutputNode>();
        o->expr = ExprParser(s.body).parse_all();
        b->children.push_back(std::move(o));
        ++pos_;
        continue;
      }
      const std::string kw = keyword(s.body);
      if (ends.count(kw)) return b;
      try {
        b->children.push_back(statement(kw));
      } catch (const Error& e) {
        const std::string what = e.what();
        if (what.find(" at line ") != std::string::npos) throw;
        throw Error(what + " at line " + std::to_string(s.line));
      }
    }
    if (!ends.empty()) fail("missing {% " + *ends.rbegin() + " %}");
    return b;
  }
  NodePtr statement(const std::string& kw) {
    const Segment& s = segs_[pos_++];
    ExprParser p(s.body);
    p.name();  // the keyword
    if (kw == "if") {
      NestingGuard level(nesting_);
      auto n = std::make_unique<IfNode>();
      ExprPtr cond = p.expression();
      p.expect_end();
      while (true) {
        auto body = block({"elif", "else", "endif"});
        n->branches.push_back({std::move(cond), std::move(body)});
        if (pos_ >= segs_.size()) fail("missing {% endif %}");
        const std::string next = keyword(segs_[pos_].body);
        ExprParser q(segs_[pos_++].body);
        q.name();
        if (next == "elif") {
          cond = q.expression();
          q.expect_end();
        } else if (next == "else") {
          auto otherwise = block({"endif"});
          n->branches.push_back({nullptr, std::move(otherwise)});
          if (pos_ >= segs_.size()) fail("missing {% endif %}");
          ++pos_;
          return n;
        } else {
          return n;
        }
      }
    }
    if (kw == "for") {
      NestingGuard level(nesting_);
      auto n = std::make_unique<ForNode>();
      do n->targets.push_back(p.name());
      while (p.accept_op(","));
      if (!p.accept_name("in")) fail("expected 'in' in '" + s.body + "'");
      n->iterable = p.expression();
      if (auto* c = dynamic_cast<CondExpr*>(n->iterable.get()); c && !c->otherwise) {  // for x in xs if cond
        n->filter = std::move(c->cond);
        n->iterable = std::move(c->then);
      }
      p.expect_end();
      n->body = block({"else", "endfor"});
      if (pos_ >= segs_.size()) fail("missing {% endfor %}");
      if (keyword(segs_[pos_++].body) == "else") {
        n->otherwise = block({"endfor"});
        if (pos_ >= segs_.size()) fail("missing {% endfor %}");
        ++pos_;
      }
      return n;
    }
    if (kw == "set") {
      auto n = std::make_unique<SetNode>();
      n->name = p.name();
      if (p.accept_op(".")) n->attribute = p.name();
      if (!p.accept_op("=")) fail("block {% set %} is not supported: '" + s.body + "'");
      n->value = p.expression();
      p.expect_end();
      return n;
    }
    if (kw == "generation" || kw == "endgeneration") return std::make_unique<BlockNode>();  // HF's marker only
    fail("unsupported statement '" + kw + "'");
  }

  std::vector<Segment> segs_;
  size_t pos_ = 0;
  int nesting_ = 0;
};

// ---- evaluation

// Work is counted in units (chat_template_limits::kMaxWorkUnits): a loop iteration, which binds
// the loop variables and builds `loop`, costs as much as a few expressions.
constexpr int64_t kBytesPerUnit = 16;
constexpr int64_t kUnitsPerIteration = 4;

// The size of a value in work units; refuses values nested deeper than kMaxValueDepth, so the
// recursion here and in copies, comparisons and printing stays shallow.
int64_t measure(const Json& j, int depth) {
  if (depth > kMaxValueDepth) fail("a value nests deeper than " + std::to_string(kMaxValueDepth) + " levels");
  if (j.is_string()) return 1 + int64_t(j.get_ref<const std::string&>().size()) / kBytesPerUnit;
  int64_t n = 1;
  if (j.is_array() || j.is_object())
    for (const auto& x : j) n += measure(x, depth + 1);
  return n;
}

class Renderer {
 public:
  explicit Renderer(const Json& globals) {
    charge(measure(globals, 0));  // refuses too-deep input before anything copies it (copies recurse)
    scopes_.push_back({});
    for (auto it = globals.begin(); it != globals.end(); ++it) scopes_[0][it.key()] = Value{it.value()};
  }

  void render(const ChatTemplate::Node& node, std::string& out) {
    charge(1);
    if (auto* t = dynamic_cast<const TextNode*>(&node)) {
      append(out, t->text);
    } else if (auto* o = dynamic_cast<const OutputNode*>(&node)) {
      append(out, py_str(eval(*o->expr)));
    } else if (auto* b = dynamic_cast<const BlockNode*>(&node)) {
      for (const auto& c : b->children) render(*c, out);
    } else if (auto* i = dynamic_cast<const IfNode*>(&node)) {
      for (const auto& [cond, body] : i->branches)
        if (!cond || truthy(eval(*cond))) {
          render(*body, out);
          break;
        }
    } else if (auto* f = dynamic_cast<const ForNode*>(&node)) {
      render_for(*f, out);
    } else if (auto* s = dynamic_cast<const SetNode*>(&node)) {
      Value v = stored(eval(*s->value));
      if (s->attribute.empty()) {
        scopes_.back()[s->name] = std::move(v);
      } else {
        Value* target = lookup(s->name);
        if (!target || !target->j().is_object()) fail("cannot set attribute of '" + s->name + "'");
        target->owned[s->attribute] = std::move(v.owned);
      }
    }
  }

 private:
  void charge(int64_t units) {
    work_ += units;
    if (work_ > kMaxWorkUnits)
      fail("rendering needs more than " + std::to_string(kMaxWorkUnits) +
           " steps (a loop without end, or values that grow without bound?)");
  }
  void append(std::string& out, const std::string& text) {
    charge(int64_t(text.size()) / kBytesPerUnit);
    if (out.size() + text.size() > kMaxOutputBytes)
      fail("the output exceeds " + std::to_string(kMaxOutputBytes >> 20) + " MiB");
    out += text;
  }
  static void check_string_size(double bytes) {
    if (bytes > double(kMaxOutputBytes))
      fail("a string of more than " + std::to_string(kMaxOutputBytes >> 20) + " MiB");
  }
  // A value to keep beyond the expression: borrowed values are copied.
  Value stored(Value v) {
    if (!v.ref) return v;
    charge(measure(*v.ref, 0));
    return Value{*v.ref, v.undefined};
  }
  std::vector<std::string> chars(const std::string& s) {
    charge(int64_t(s.size()));  // one string per code point
    return code_points(s);
  }

  Value* lookup(const std::string& name) {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto hit = it->find(name);
      if (hit != it->end()) return &hit->second;
    }
    return nullptr;
  }

  void render_for(const ForNode& f, std::string& out) {
    const Value iterable = eval(*f.iterable);
    const Json& seq = iterable.j();
    std::vector<Json> items;
    charge(measure(seq, 0));
    if (seq.is_array()) items.assign(seq.begin(), seq.end());
    else if (seq.is_object())
      for (auto it = seq.begin(); it != seq.end(); ++it) items.push_back(it.key());
    else if (seq.is_string())
      for (const auto& cp : chars(seq.get_ref<const std::string&>())) items.push_back(cp);
    else if (!iterable.undefined && !seq.is_null()) fail("cannot loop over " + py_repr(seq));
    const auto bind = [&](std::map<std::string, Value>& scope, const Json& item) {
      if (f.targets.size() == 1) {
        scope[f.targets[0]] = Value{item};
        return;
      }
      if (!item.is_array() || item.size() != f.targets.size()) fail("cannot unpack " + py_repr(item));
      for (size_t k = 0; k < f.targets.size(); ++k) scope[f.targets[k]] = Value{item[k]};
    };
    if (f.filter) {  // the filter sees each item before loop.* exists
      std::vector<Json> kept;
      for (const Json& item : items) {
        charge(1);
        scopes_.push_back({});
        bind(scopes_.back(), item);
        const bool keep = truthy(eval(*f.filter));
        scopes_.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      if (f.otherwise) render(*f.otherwise, out);
      return;
    }
    const int64_t n = int64_t(items.size());
    for (int64_t i = 0; i < n; ++i) {
      charge(kUnitsPerIteration);
      scopes_.push_back({});
      bind(scopes_.back(), items[size_t(i)]);
      Json loop = {{"index0", i},     {"index", i + 1},      {"first", i == 0},
                   {"last", i == n - 1}, {"length", n},      {"revindex", n - i},
                   {"revindex0", n - i - 1}};
      loop["previtem"] = i > 0 ? items[size_t(i - 1)] : Json();
      loop["nextitem"] = i + 1 < n ? items[size_t(i + 1)] : Json();
      scopes_.back()["loop"] = Value{loop};
      render(*f.body, out);
      scopes_.pop_back();
    }
  }

  static int64_t as_int(const Value& v, const char* what) {
    if (v.j().is_number_integer()) return v.j().get<int64_t>();
    if (v.j().is_boolean()) return v.j().get<bool>();
    fail(std::string(what) + " must be an integer, got " + py_repr(v.j()));
  }
  static const std::string& as_string(const Value& v, const std::string& what) {
    if (!v.j().is_string()) fail(what + " must be a string, got " + (v.undefined ? "undefined" : py_repr(v.j())));
    return v.j().get_ref<const std::string&>();
  }

  Value eval(const Expr& e) {
    charge(1);
    Value v = eval_node(e);
    if (!v.ref) charge(measure(v.owned, 0));
    return v;
  }

  Value eval_node(const Expr& e) {
    if (auto* l = dynamic_cast<const Literal*>(&e)) return Value::borrow(l->value);
    if (auto* v = dynamic_cast<const Variable*>(&e)) {
      if (Value* found = lookup(v->name)) return found->undefined ? Value::undef() : Value::borrow(found->j());
      return Value::undef();
    }
    if (auto* a = dynamic_cast<const Attribute*>(&e)) return get_item(eval(*a->object), Json(a->name));
    if (auto* s = dynamic_cast<const Subscript*>(&e)) {
      const Value object = eval(*s->object);
      return get_item(object, eval(*s->index).j());
    }
    if (auto* s = dynamic_cast<const SliceExpr*>(&e)) return slice(*s);
    if (auto* c = dynamic_cast<const CallExpr*>(&e)) return call(*c);
    if (auto* f = dynamic_cast<const FilterExpr*>(&e)) return filter(*f);
    if (auto* t = dynamic_cast<const TestExpr*>(&e)) {
      const bool r = test(*t);
      return Value{Json(t->negated ? !r : r)};
    }
    if (auto* u = dynamic_cast<const UnaryExpr*>(&e)) {
      const Value v = eval(*u->value);
      const Json& j = v.j();
      if (u->op == "not") return Value{Json(!truthy(v))};
      if (j.is_number_integer()) {
        const int64_t x = j.get<int64_t>();
        if (u->op == "-" && x == std::numeric_limits<int64_t>::min()) fail("integer overflow in -" + std::to_string(x));
        return Value{Json(u->op == "-" ? -x : x)};
      }
      if (j.is_number()) return Value{Json(u->op == "-" ? -j.get<double>() : j.get<double>())};
      fail("bad operand for unary " + u->op);
    }
    if (auto* b = dynamic_cast<const BinaryExpr*>(&e)) return binary(*b);
    if (auto* c = dynamic_cast<const CondExpr*>(&e)) {
      if (truthy(eval(*c->cond))) return eval(*c->then);
      return c->otherwise ? eval(*c->otherwise) : Value::undef();
    }
    if (auto* l = dynamic_cast<const ListExpr*>(&e)) {
      Json arr = Json::array();
      for (const auto& item : l->items) arr.push_back(eval(*item).j());
      return Value{arr};
    }
    if (auto* d = dynamic_cast<const DictExpr*>(&e)) {
      Json obj = Json::object();
      for (const auto& [k, v] : d->items) obj[py_str(eval(*k))] = eval(*v).j();
      return Value{obj};
    }
    fail("unknown expression");
  }

  // obj[key]; borrows from obj when obj is borrowed, so reading messages[i].content copies nothing.
  Value get_item(const Value& obj, const Json& key) {
    if (obj.undefined) return Value::undef();
    const Json& j = obj.j();
    const auto result = [&](const Json& item) { return obj.ref ? Value::borrow(item) : Value{item}; };
    if (j.is_object()) {
      if (!key.is_string()) return Value::undef();
      auto it = j.find(key.get_ref<const std::string&>());
      return it == j.end() ? Value::undef() : result(*it);
    }
    if ((j.is_array() || j.is_string()) && key.is_number_integer()) {
      int64_t i = key.get<int64_t>();
      if (j.is_array()) {
        const int64_t n = int64_t(j.size());
        if (i < 0) i += n;
        return i >= 0 && i < n ? result(j[size_t(i)]) : Value::undef();
      }
      const auto cps = chars(j.get_ref<const std::string&>());
      const int64_t n = int64_t(cps.size());
      if (i < 0) i += n;
      return i >= 0 && i < n ? Value{Json(cps[size_t(i)])} : Value::undef();
    }
    return Value::undef();
  }

  Value slice(const SliceExpr& s) {
    const Value obj = eval(*s.object);
    const Json& j = obj.j();
    std::vector<Json> items;
    const bool is_string = j.is_string();
    if (is_string)
      for (const auto& cp : chars(j.get_ref<const std::string&>())) items.push_back(cp);
    else if (j.is_array()) items.assign(j.begin(), j.end());
    else fail("cannot slice " + py_repr(j));
    const int64_t n = int64_t(items.size());
    const int64_t step = s.step ? as_int(eval(*s.step), "slice step") : 1;
    if (step == 0) fail("slice step cannot be zero");
    const auto bound = [&](const ExprPtr& e, int64_t fallback) {
      if (!e) return fallback;
      int64_t v = as_int(eval(*e), "slice index");
      if (v < 0) v = v < -n ? -n - 1 : v + n;  // no overflow for the most negative index
      return step > 0 ? std::clamp<int64_t>(v, 0, n) : std::clamp<int64_t>(v, -1, n - 1);
    };
    const int64_t start = bound(s.start, step > 0 ? 0 : n - 1), stop = bound(s.stop, step > 0 ? n : -1);
    Json out = is_string ? Json("") : Json::array();
    // start and stop lie in [-1, n]; stepping by a huge step must not overflow.
    for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
      if (is_string) out.get_ref<std::string&>() += items[size_t(i)].get_ref<const std::string&>();
      else out.push_back(items[size_t(i)]);
      if (step > 0 ? stop - i <= step : i - stop <= -step) break;
      i += step;
    }
    return Value{out};
  }

  Value binary(const BinaryExpr& b) {
    if (b.op == "and") {
      Value l = eval(*b.left);
      return truthy(l) ? eval(*b.right) : l;
    }
    if (b.op == "or") {
      Value l = eval(*b.left);
      return truthy(l) ? l : eval(*b.right);
    }
    const Value l = eval(*b.left), r = eval(*b.right);
    const Json &x = l.j(), &y = r.j();
    if (b.op == "~") {
      std::string a = py_str(l), c = py_str(r);
      check_string_size(double(a.size()) + double(c.size()));
      return Value{Json(a + c)};
    }
    if (b.op == "==" || b.op == "!=") {
      charge(measure(x, 0) + measure(y, 0));
      return Value{Json(equal(l, r) == (b.op == "=="))};
    }
    if (b.op == "in" || b.op == "not in") {
      bool found = false;
      charge(measure(y, 0));
      if (y.is_string() && x.is_string()) {
        charge(int64_t(x.get_ref<const std::string&>().size()) / kBytesPerUnit);
        found = y.get_ref<const std::string&>().find(x.get_ref<const std::string&>()) != std::string::npos;
      } else if (y.is_array()) {
        found = std::any_of(y.begin(), y.end(), [&](const Json& v) { return equal(l, Value::borrow(v)); });
      } else if (y.is_object()) {
        found = x.is_string() && y.contains(x.get_ref<const std::string&>());
      } else if (y.is_string()) {
        fail("'in <string>' needs a string on the left, got " + py_repr(x));
      } else if (!r.undefined) {
        fail("argument of type " + std::string(y.type_name()) + " is not iterable");  // as Python's TypeError
      }
      return Value{Json(b.op == "in" ? found : !found)};
    }
    if (b.op == "<" || b.op == ">" || b.op == "<=" || b.op == ">=") {
      int cmp;
      if (x.is_number() && y.is_number()) cmp = x.get<double>() < y.get<double>() ? -1 : x.get<double>() > y.get<double>();
      else if (x.is_string() && y.is_string()) cmp = x.get_ref<const std::string&>().compare(y.get_ref<const std::string&>());
      else fail("cannot compare " + py_repr(x) + " and " + py_repr(y));
      const bool res = b.op == "<" ? cmp < 0 : b.op == ">" ? cmp > 0 : b.op == "<=" ? cmp <= 0 : cmp >= 0;
      return Value{Json(res)};
    }
    if (b.op == "+") {
      if (x.is_string() && y.is_string()) {
        check_string_size(double(x.get_ref<const std::string&>().size()) + double(y.get_ref<const std::string&>().size()));
        return Value{Json(x.get_ref<const std::string&>() + y.get_ref<const std::string&>())};
      }
      if (x.is_array() && y.is_array()) {
        charge(measure(x, 0) + measure(y, 0));
        Json out = x;
        for (const auto& v : y) out.push_back(v);
        return Value{out};
      }
    }
    if (x.is_string() && y.is_number_integer() && b.op == "*") {
      const std::string& s = x.get_ref<const std::string&>();
      const int64_t times = std::max<int64_t>(0, y.get<int64_t>());
      check_string_size(double(s.size()) * double(times));  // before allocating; eval() charges the result
      std::string out;
      out.reserve(s.size() * size_t(times));
      for (int64_t i = 0; i < times; ++i) out += s;
      return Value{Json(out)};
    }
    if (!(x.is_number() || x.is_boolean()) || !(y.is_number() || y.is_boolean()))
      fail("unsupported operands for " + b.op + ": " + py_repr(x) + " and " + py_repr(y));
    const bool ints = (x.is_number_integer() || x.is_boolean()) && (y.is_number_integer() || y.is_boolean());
    if (ints && b.op != "/") {
      const int64_t a = x.is_boolean() ? x.get<bool>() : x.get<int64_t>(), c = y.is_boolean() ? y.get<bool>() : y.get<int64_t>();
      // Python's integers do not overflow; ours are 64-bit, so overflow is an error, not a wrong value.
      const auto overflow = [&] { fail("integer overflow in " + std::to_string(a) + " " + b.op + " " + std::to_string(c)); };
      int64_t res = 0;
      if (b.op == "**" && c >= 0) {
        res = 1;
        for (int64_t k = 0; k < c; ++k) {
          if (__builtin_mul_overflow(res, a, &res)) overflow();
          if (res == 0 || res == 1 || (res == -1 && a == -1)) {  // stays there: finish without looping
            if (res == -1 || (a == -1 && res == 1)) res = (c % 2 == 0) ? 1 : -1;
            break;
          }
        }
        return Value{Json(res)};
      }
      if (b.op == "+") return __builtin_add_overflow(a, c, &res) ? overflow(), Value() : Value{Json(res)};
      if (b.op == "-") return __builtin_sub_overflow(a, c, &res) ? overflow(), Value() : Value{Json(res)};
      if (b.op == "*") return __builtin_mul_overflow(a, c, &res) ? overflow(), Value() : Value{Json(res)};
      if (b.op == "**") return Value{Json(std::pow(double(a), double(c)))};
      if (c == 0) fail("division by zero");
      if (a == std::numeric_limits<int64_t>::min() && c == -1) overflow();
      const int64_t q = a / c - ((a % c != 0) && ((a < 0) != (c < 0)));  // Python floors
      if (b.op == "//") return Value{Json(q)};
      if (b.op == "%") return Value{Json(a - q * c)};
    }
    const double a = x.get<double>(), c = y.get<double>();
    if (b.op == "+") return Value{Json(a + c)};
    if (b.op == "-") return Value{Json(a - c)};
    if (b.op == "*") return Value{Json(a * c)};
    if ((b.op == "/" || b.op == "//" || b.op == "%") && c == 0) fail("division by zero");
    if (b.op == "/") return Value{Json(a / c)};
    if (b.op == "//") return Value{Json(std::floor(a / c))};
    if (b.op == "%") return Value{Json(a - std::floor(a / c) * c)};
    if (b.op == "**") return Value{Json(std::pow(a, c))};
    fail("unknown operator " + b.op);
  }

  static bool equal(const Value& l, const Value& r) {
    if (l.undefined || r.undefined) return l.undefined == r.undefined && l.j() == r.j();
    if (l.j().is_number() && r.j().is_number()) return l.j().get<double>() == r.j().get<double>();
    return l.j() == r.j();
  }

  bool test(const TestExpr& t) {
    const Value v = eval(*t.value);
    const Json& j = v.j();
    const std::string& n = t.name;
    if (n == "defined") return !v.undefined;
    if (n == "undefined") return v.undefined;
    if (n == "none") return !v.undefined && j.is_null();
    if (n == "string") return j.is_string();
    if (n == "number") return j.is_number();
    if (n == "integer") return j.is_number_integer();
    if (n == "float") return j.is_number_float();
    if (n == "mapping") return j.is_object();
    if (n == "sequence" || n == "iterable") return j.is_array() || j.is_string() || j.is_object();
    if (n == "boolean") return j.is_boolean();
    if (n == "true") return j.is_boolean() && j.get<bool>();
    if (n == "false") return j.is_boolean() && !j.get<bool>();
    if (n == "even" || n == "odd") return j.is_number_integer() && (j.get<int64_t>() % 2 == 0) == (n == "even");
    if (n == "equalto" || n == "eq" || n == "sameas") {
      if (t.args.empty()) return false;
      const Value other = eval(*t.args[0]);
      charge(measure(j, 0) + measure(other.j(), 0));
      return equal(v, other);
    }
    fail("unsupported test '" + n + "'");
  }

  Value filter(const FilterExpr& f) {
    Value v = eval(*f.value);
    std::vector<Value> args;
    for (const auto& a : f.args) args.push_back(eval(*a));
    std::map<std::string, Value> kwargs;
    for (const auto& [k, a] : f.kwargs) kwargs[k] = eval(*a);
    const std::string& n = f.name;
    const Json& j = v.j();
    if (n == "tojson") {
      const auto indent = kwargs.count("indent") ? kwargs["indent"] : args.empty() ? Value::undef() : args[0];
      const int64_t width = indent.j().is_number_integer() ? indent.j().get<int64_t>() : -1;
      if (width > 1000) fail("tojson indent " + std::to_string(width) + " is more than 1000");
      std::string out;
      to_json(j, int(width), 0, kwargs.count("sort_keys") && truthy(kwargs["sort_keys"]), out);
      check_string_size(double(out.size()));
      return Value{Json(out)};
    }
    if (n == "trim") return Value{Json(py_strip(py_str(v), args.empty() ? nullptr : &args[0], true, true))};
    if (n == "length" || n == "count") {
      if (j.is_string()) return Value{Json(int64_t(count_code_points(j.get_ref<const std::string&>())))};
      return Value{Json(int64_t(v.undefined || j.is_null() || !(j.is_array() || j.is_object()) ? 0 : j.size()))};
    }
    if (n == "upper" || n == "lower") {
      std::string s = py_str(v);
      for (char& c : s) c = char(n == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
      return Value{Json(s)};
    }
    if (n == "capitalize" || n == "title") return call_method(Value{Json(py_str(v))}, n, args);
    if (n == "first" || n == "last") {
      if (j.is_array()) return j.empty() ? Value::undef() : get_item(v, Json(n == "first" ? 0 : -1));
      if (j.is_string()) {
        const auto cps = chars(j.get_ref<const std::string&>());
        return cps.empty() ? Value::undef() : Value{Json(n == "first" ? cps.front() : cps.back())};
      }
      fail(n + " needs a list or string");
    }
    if (n == "join") {
      const std::string sep = args.empty() ? "" : py_str(args[0]);
      std::vector<std::string> parts;
      double bytes = 0;
      if (j.is_array())
        for (const auto& item : j) {
          parts.push_back(py_str(Value::borrow(item)));
          bytes += double(parts.back().size()) + double(sep.size());
          check_string_size(bytes);
        }
      std::string out;
      for (size_t i = 0; i < parts.size(); ++i) out += (i ? sep : "") + parts[i];
      return Value{Json(out)};
    }
    if (n == "default" || n == "d") {
      const bool boolean = (args.size() > 1 && truthy(args[1])) || (kwargs.count("boolean") && truthy(kwargs["boolean"]));
      if (v.undefined || (boolean && !truthy(v))) return args.empty() ? Value{Json("")} : args[0];
      return v;
    }
    if (n == "string") return Value{Json(py_str(v))};
    if (n == "int") {
      if (j.is_number_integer()) return Value{Json(j.get<int64_t>())};
      if (j.is_number()) {
        const double d = j.get<double>();
        if (!(std::fabs(d) < 9.2e18)) fail("cannot convert " + py_repr(j) + " to an integer");
        return Value{Json(int64_t(d))};
      }
      try {
        return Value{Json(std::stoll(py_str(v)))};
      } catch (...) {
        return Value{Json(int64_t(0))};
      }
    }
    if (n == "list") {
      if (j.is_array()) return v;
      Json out = Json::array();
      if (j.is_string())
        for (const auto& cp : chars(j.get_ref<const std::string&>())) out.push_back(cp);
      else if (j.is_object())
        for (auto it = j.begin(); it != j.end(); ++it) out.push_back(it.key());
      return Value{out};
    }
    if (n == "items") return call_method(v, "items", {});
    if (n == "reverse") {
      if (j.is_string()) {
        auto cps = chars(j.get_ref<const std::string&>());
        std::string out;
        for (auto it = cps.rbegin(); it != cps.rend(); ++it) out += *it;
        return Value{Json(out)};
      }
      Json out = Json::array();
      if (j.is_array() || j.is_object())
        for (auto it = j.rbegin(); it != j.rend(); ++it) out.push_back(*it);
      return Value{out};
    }
    if (n == "unique") {
      Json out = Json::array();
      if (j.is_array())
        for (const auto& x : j) {
          charge(int64_t(out.size()));
          if (std::find(out.begin(), out.end(), x) == out.end()) out.push_back(x);
        }
      return Value{out};
    }
    if (n == "replace") return call_method(Value{Json(py_str(v))}, "replace", args);
    if (n == "safe") return v;
    fail("unsupported filter '" + n + "'");
  }

  Value call(const CallExpr& c) {
    std::vector<Value> args;
    for (const auto& a : c.args) args.push_back(eval(*a));
    if (auto* attr = dynamic_cast<const Attribute*>(c.callee.get())) {
      return call_method(eval(*attr->object), attr->name, args);
    }
    auto* var = dynamic_cast<const Variable*>(c.callee.get());
    if (!var) fail("this expression cannot be called");
    if (var->name == "namespace") {
      Json ns = Json::object();
      for (const auto& [k, a] : c.kwargs) ns[k] = eval(*a).j();
      return Value{ns};
    }
    if (var->name == "range") {
      int64_t start = 0, stop = 0, step = 1;
      if (args.size() == 1) stop = as_int(args[0], "range()");
      else if (args.size() >= 2) start = as_int(args[0], "range()"), stop = as_int(args[1], "range()");
      if (args.size() == 3) step = as_int(args[2], "range()");
      if (step == 0) fail("range() step is zero");
      // The item count without overflow; more than kMaxRange is refused, as Jinja's sandbox does.
      const __int128 span = step > 0 ? __int128(stop) - start : __int128(start) - stop;
      const __int128 count = span <= 0 ? 0 : (span + (step > 0 ? __int128(step) : -__int128(step)) - 1) /
                                                 (step > 0 ? __int128(step) : -__int128(step));
      if (count > kMaxRange)
        fail("range() of " + std::to_string(int64_t(std::min<__int128>(count, std::numeric_limits<int64_t>::max()))) +
             " items is more than " + std::to_string(kMaxRange));
      Json out = Json::array();
      for (int64_t k = 0; k < int64_t(count); ++k) out.push_back(int64_t(start + __int128(k) * step));
      return Value{out};
    }
    if (var->name == "raise_exception") fail(args.empty() ? "raise_exception" : py_str(args[0]));
    if (var->name == "strftime_now") {
      char buf[256];
      const std::time_t now = std::time(nullptr);
      const size_t len = std::strftime(buf, sizeof buf, args.empty() ? "%Y-%m-%d" : py_str(args[0]).c_str(), std::localtime(&now));
      return Value{Json(std::string(buf, len))};  // 0 when the format does not fit
    }
    fail("unknown function '" + var->name + "'");
  }

  Value call_method(const Value& obj, const std::string& m, const std::vector<Value>& args) {
    const Json& j = obj.j();
    const Value* a0 = args.size() > 0 ? &args[0] : nullptr;
    if (j.is_string()) {
      const std::string& s = j.get_ref<const std::string&>();
      charge(int64_t(s.size()) / kBytesPerUnit);
      if (m == "startswith" || m == "endswith") {
        if (!a0) fail(m + "() needs an argument");
        std::vector<std::string> options;
        if (a0->j().is_array())
          for (const auto& x : a0->j()) options.push_back(as_string(Value::borrow(x), m + "() argument"));
        else options.push_back(as_string(*a0, m + "() argument"));
        for (const auto& p : options) {
          if (m == "startswith" && s.compare(0, p.size(), p) == 0) return Value{Json(true)};
          if (m == "endswith" && s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0) return Value{Json(true)};
        }
        return Value{Json(false)};
      }
      const Value* chars_arg = a0 && !a0->undefined && !a0->j().is_null() ? a0 : nullptr;
      if (chars_arg && (m == "strip" || m == "lstrip" || m == "rstrip" || m == "split")) as_string(*chars_arg, m + "() argument");
      if (m == "strip") return Value{Json(py_strip(s, chars_arg, true, true))};
      if (m == "lstrip") return Value{Json(py_strip(s, chars_arg, true, false))};
      if (m == "rstrip") return Value{Json(py_strip(s, chars_arg, false, true))};
      if (m == "split") return Value{py_split(s, chars_arg, args.size() > 1 ? as_int(args[1], "maxsplit") : -1)};
      if (m == "upper" || m == "lower") {
        std::string out = s;
        for (char& c : out) c = char(m == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
        return Value{Json(out)};
      }
      if (m == "capitalize" || m == "title") {
        std::string out = s;
        bool start = true;
        for (char& c : out) {
          const bool alpha = std::isalpha(static_cast<unsigned char>(c));
          c = char(start && alpha ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
          if (m == "capitalize") start = false;
          else start = !alpha;
        }
        return Value{Json(out)};
      }
      if (m == "replace") {
        if (args.size() < 2) fail("replace() needs two arguments");
        const std::string from = py_str(args[0]), to = py_str(args[1]);
        if (from.empty()) return Value{j};
        size_t hits = 0;
        for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + from.size())) ++hits;
        check_string_size(double(s.size()) + double(hits) * (double(to.size()) - double(from.size())));
        std::string out;
        size_t at = 0;
        for (size_t hit; (hit = s.find(from, at)) != std::string::npos; at = hit + from.size()) out.append(s, at, hit - at) += to;
        return Value{Json(out.append(s, at))};
      }
    }
    if (j.is_object()) {
      if (m == "items") {
        Json out = Json::array();
        for (auto it = j.begin(); it != j.end(); ++it) out.push_back(Json::array({it.key(), it.value()}));
        return Value{out};
      }
      if (m == "keys" || m == "values") {
        Json out = Json::array();
        for (auto it = j.begin(); it != j.end(); ++it) out.push_back(m == "keys" ? Json(it.key()) : it.value());
        return Value{out};
      }
      if (m == "get") {
        const Value found = a0 ? get_item(obj, a0->j()) : Value::undef();
        return found.undefined ? (args.size() > 1 ? args[1] : Value{Json()}) : found;
      }
    }
    fail("unsupported method '" + m + "' on " + (obj.undefined ? std::string("undefined") : py_repr(j)));
  }

  std::vector<std::map<std::string, Value>> scopes_;
  int64_t work_ = 0;
};

// Errors of the JSON library or the standard library (a wrong type deep in a value, memory) become
// template errors, so a caller sees one kind of error whatever the template does.
template <class F>
auto as_template_error(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const nlohmann::json::exception& e) {
    const std::string what = e.what();
    const size_t bracket = what.find("] ");  // drop the library's "[json.exception.type_error.302] "
    fail(bracket == std::string::npos ? what : what.substr(bracket + 2));
  } catch (const std::bad_alloc&) {
    fail("out of memory");
  } catch (const std::exception& e) {
    fail(e.what());
  }
}

}  // namespace

ChatTemplate::ChatTemplate(const std::string& source)
    : root_(as_template_error([&] { return NodePtr(TemplateParser(segment(source)).parse()); })) {}
ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;

std::string ChatTemplate::render(const Json& variables) const {
  return as_template_error([&] {
    std::string out;
    Renderer(variables).render(*root_, out);
    return out;
  });
}

namespace {

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  require(in.good(), "cannot open " + path.string());
  std::ostringstream text;
  text << in.rdbuf();
  require(!in.bad(), "cannot read " + path.string());
  return text.str();
}

}  // namespace

nlohmann::json read_tokenizer_config(const std::filesystem::path& dir) {
  nlohmann::json config = read_json_file(dir / "tokenizer_config.json");
  const std::filesystem::path jinja = dir / "chat_template.jinja";
  if (std::filesystem::exists(jinja)) config["chat_template"] = read_text(jinja);
  return config;
}

ChatRequest read_chat_request(const std::filesystem::path& path) {
  Json j;
  try {
    j = Json::parse(read_text(path));  // ordered: tojson writes keys in the file's order, as Python does
  } catch (const nlohmann::json::exception& e) {
    const std::string what = e.what();
    throw Error(path.string() + ": invalid JSON: " + what.substr(what.find("] ") == std::string::npos ? 0 : what.find("] ") + 2));
  }
  try {
    measure(j, 0);  // before anything copies it: copies recurse
  } catch (const Error& e) {
    throw Error(path.string() + ": " + e.what());
  }
  return chat_request_from_json(j, path.string());
}

ChatRequest chat_request_from_json(const Json& j, const std::string& source) {
  const auto where = [&](const std::string& key) { return source + ": \"" + key + "\""; };
  require(j.is_object(), source + ": expected a JSON object with \"messages\"");
  require(j.contains("messages") && j["messages"].is_array(), where("messages") + " must be a list of messages");
  ChatRequest request;
  request.add_generation_prompt = false;  // apply_chat_template's default
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const Json& v = it.value();
    if (key == "messages") {
      for (const auto& m : v) require(m.is_object(), where("messages") + " must hold objects with a role and content");
      request.messages = v;
    } else if (key == "tools") {
      require(v.is_array() || v.is_null(), where("tools") + " must be a list");
      request.tools = v;
    } else if (key == "add_generation_prompt" || key == "continue_final_message") {
      require(v.is_boolean(), where(key) + " must be true or false");
      (key == "add_generation_prompt" ? request.add_generation_prompt : request.continue_final_message) = v.get<bool>();
    } else {
      request.extra[key] = v;  // documents and template variables such as enable_thinking
    }
  }
  return request;
}

namespace {

// continue_final_message: the rendering ends where the final message's text ends, so the model
// continues that message (transformers cuts after the message's last occurrence, keeping trailing
// spaces only where the template kept them).
std::string cut_after_final_message(const std::string& rendered, const Json& messages) {
  const Json& last = messages.back();
  std::string text;
  const Json content = last.is_object() && last.contains("content") ? last["content"] : Json();
  if (content.is_string()) {
    text = content.get<std::string>();
  } else if (content.is_array()) {
    bool found = false;
    for (auto it = content.rbegin(); it != content.rend() && !found; ++it)
      if (it->is_object() && it->contains("text") && (*it)["text"].is_string()) text = (*it)["text"].get<std::string>(), found = true;
    require(found, "continue_final_message: the final message has no text to continue");
  } else {
    throw Error("continue_final_message: the final message has no text to continue");
  }
  const std::string stripped = py_strip(text, nullptr, true, true), lstripped = py_strip(text, nullptr, true, false);
  const size_t at = rendered.rfind(stripped);
  require(at != std::string::npos,
          "continue_final_message: the final message does not appear in the rendered chat");
  if (rendered.compare(at, lstripped.size(), text) == 0) return rendered.substr(0, at + lstripped.size());
  return rendered.substr(0, at + stripped.size());
}

}  // namespace

std::string apply_chat_template(const nlohmann::json& config, const ChatRequest& request) {
  require(config.contains("chat_template"), "tokenizer_config.json has no chat_template");
  require(!request.messages.empty(), "the conversation has no messages");
  require(!(request.continue_final_message && request.add_generation_prompt),
          "continue_final_message and add_generation_prompt cannot both be set");
  std::string source;
  const auto& t = config["chat_template"];
  if (t.is_string()) {
    source = t.get<std::string>();
  } else {  // a list of named templates: take "default" (or "tool_use" when tools are given)
    require(t.is_array(), "tokenizer_config.json: chat_template must be a string or a list");
    for (const auto& named : t)
      if (named.is_object() && named.contains("name") && named.contains("template") && named["template"].is_string() &&
          (named["name"] == (request.tools.is_null() ? "default" : "tool_use") ||
           (source.empty() && named["name"] == "default")))
        source = named["template"].get<std::string>();
    require(!source.empty(), "tokenizer_config.json: no default chat template");
  }
  Json vars = Json::object();
  // Special tokens as variables: strings, or AddedToken objects with their "content".
  for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"}) {
    if (!config.contains(key) || config[key].is_null()) continue;
    const auto& v = config[key];
    if (v.is_string()) vars[key] = v.get<std::string>();
    else if (v.is_object() && v.contains("content") && v["content"].is_string()) vars[key] = v["content"].get<std::string>();
  }
  if (config.contains("additional_special_tokens")) vars["additional_special_tokens"] = config["additional_special_tokens"];
  vars["messages"] = request.messages;
  vars["tools"] = request.tools;  // None when not given, as transformers passes it
  vars["documents"] = Json();
  vars["add_generation_prompt"] = request.add_generation_prompt;
  for (auto it = request.extra.begin(); it != request.extra.end(); ++it) vars[it.key()] = it.value();
  const std::string rendered = ChatTemplate(source).render(vars);
  return request.continue_final_message ? cut_after_final_message(rendered, request.messages) : rendered;
}

}  // namespace crossmoe
