#include "server/store/pg/pq.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

namespace videogen::store::pg {

Params& Params::Text(std::string_view v) {
  values_.emplace_back(v);
  null_.push_back(false);
  lengths_.push_back(static_cast<int>(v.size()));
  formats_.push_back(0);
  return *this;
}

Params& Params::Bytes(std::string_view v) {
  Text(v);
  formats_.back() = 1;
  return *this;
}

Params& Params::Int(int64_t v) { return Text(absl::StrCat(v)); }

Params& Params::Bool(bool v) { return Text(v ? "t" : "f"); }

Params& Params::Null() {
  Text("");
  null_.back() = true;
  return *this;
}

Params& Params::TextOrNull(std::string_view v) {
  return v.empty() ? Null() : Text(v);
}

const char* const* Params::values() {
  pointers_.clear();
  for (size_t i = 0; i < values_.size(); ++i) {
    pointers_.push_back(null_[i] ? nullptr : values_[i].data());
  }
  return pointers_.data();
}

bool Row::IsNull(int col) const { return PQgetisnull(result_, row_, col) != 0; }

std::string_view Row::Bytes(int col) const {
  if (IsNull(col)) return {};
  return std::string_view(PQgetvalue(result_, row_, col),
                          PQgetlength(result_, row_, col));
}

int64_t Row::Int(int col) const {
  if (IsNull(col)) return 0;
  const auto* p =
      reinterpret_cast<const unsigned char*>(PQgetvalue(result_, row_, col));
  const int len = PQgetlength(result_, row_, col);
  uint64_t v = 0;
  for (int i = 0; i < len; ++i) v = (v << 8) | p[i];
  // Sign-extend the narrower integer types.
  if (len == 4) return static_cast<int32_t>(static_cast<uint32_t>(v));
  if (len == 2) return static_cast<int16_t>(static_cast<uint16_t>(v));
  return static_cast<int64_t>(v);
}

bool Row::Bool(int col) const {
  return !IsNull(col) && PQgetlength(result_, row_, col) == 1 &&
         PQgetvalue(result_, row_, col)[0] != 0;
}

std::string SqlState(const PGresult* result) {
  if (result == nullptr) return "";
  const char* s = PQresultErrorField(result, PG_DIAG_SQLSTATE);
  return s ? s : "";
}

bool ConnectionLost(PGconn* conn) {
  return conn == nullptr || PQstatus(conn) == CONNECTION_BAD;
}

namespace {

std::string PrimaryMessage(const PGresult* result, PGconn* conn) {
  if (result != nullptr) {
    const char* m = PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY);
    if (m != nullptr) return m;
    const char* e = PQresultErrorMessage(result);
    if (e != nullptr && *e) {
      return std::string(absl::StripTrailingAsciiWhitespace(e));
    }
  }
  if (conn != nullptr) {
    return std::string(
        absl::StripTrailingAsciiWhitespace(PQerrorMessage(conn)));
  }
  return "no connection";
}

}  // namespace

absl::Status ResultError(const PGresult* result, PGconn* conn,
                         std::string_view doing) {
  const std::string state = SqlState(result);
  const std::string msg = absl::StrFormat(
      "PostgreSQL error while %s: %s%s", doing, PrimaryMessage(result, conn),
      state.empty() ? "" : absl::StrCat(" (SQLSTATE ", state, ")"));
  if (state.empty() || ConnectionLost(conn)) {
    return absl::UnavailableError(msg);
  }
  const std::string_view cls = std::string_view(state).substr(0, 2);
  if (state == "23505") return absl::AlreadyExistsError(msg);
  if (state == "40001" || state == "40P01") return absl::AbortedError(msg);
  if (state == "57014") return absl::DeadlineExceededError(msg);
  if (cls == "08" || cls == "57" || cls == "53") {
    return absl::UnavailableError(msg);  // connection, shutdown, resources
  }
  if (cls == "28" || cls == "3D" || cls == "42") {
    return absl::FailedPreconditionError(msg);  // auth, no db, schema
  }
  return absl::InternalError(msg);
}

absl::Status CheckResult(const PGresult* result, PGconn* conn,
                         std::string_view doing) {
  if (result != nullptr) {
    const ExecStatusType st = PQresultStatus(result);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
      return absl::OkStatus();
    }
  }
  return ResultError(result, conn, doing);
}

namespace {

// Keyword/value arrays for PQconnectdbParams: our defaults first, then the
// URL as an expanded dbname, so the URL overrides every default.
class Keywords {
 public:
  explicit Keywords(const ConnectParams& p) {
    Add("connect_timeout", absl::StrCat(std::max<int64_t>(
                               2, absl::ToInt64Seconds(p.connect_timeout))));
    Add("application_name", p.application_name);
    // A server that vanishes without a FIN must not hang a call forever.
    Add("keepalives", "1");
    Add("keepalives_idle", "10");
    Add("keepalives_interval", "5");
    Add("keepalives_count", "3");
    Add("tcp_user_timeout", "30000");
    Add("dbname", p.url);
    // Pointers are taken only now, after the last growth of storage_.
    for (const auto& [key, value] : storage_) {
      keys_.push_back(key);
      values_.push_back(value.c_str());
    }
    keys_.push_back(nullptr);
    values_.push_back(nullptr);
  }
  const char* const* keys() const { return keys_.data(); }
  const char* const* values() const { return values_.data(); }

 private:
  void Add(const char* key, std::string value) {
    storage_.emplace_back(key, std::move(value));
  }
  std::vector<std::pair<const char*, std::string>> storage_;
  std::vector<const char*> keys_;
  std::vector<const char*> values_;
};

// libpq prints server NOTICEs ("relation ... already exists, skipping") to
// stderr by default; a library has no business writing there.
void Quiet(PGconn* conn) {
  PQsetNoticeProcessor(
      conn, [](void*, const char*) {}, nullptr);
}

}  // namespace

absl::StatusOr<ConnPtr> Connect(const ConnectParams& params) {
  const Keywords kw(params);
  ConnPtr conn(PQconnectdbParams(kw.keys(), kw.values(), /*expand_dbname=*/1));
  if (conn == nullptr) {
    return absl::ResourceExhaustedError("libpq: out of memory connecting");
  }
  Quiet(conn.get());
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    return absl::UnavailableError(absl::StrCat(
        "cannot connect to PostgreSQL: ",
        absl::StripTrailingAsciiWhitespace(PQerrorMessage(conn.get())),
        "; check --database_url and that the server is up"));
  }
  return conn;
}

PGconn* StartConnect(const ConnectParams& params) {
  const Keywords kw(params);
  PGconn* conn =
      PQconnectStartParams(kw.keys(), kw.values(), /*expand_dbname=*/1);
  if (conn != nullptr) Quiet(conn);
  return conn;
}

int64_t ToNs(absl::Time t) {
  if (t == absl::InfinitePast()) return std::numeric_limits<int64_t>::min();
  if (t == absl::InfiniteFuture()) return std::numeric_limits<int64_t>::max();
  return absl::ToUnixNanos(t);
}

absl::Time FromNs(int64_t ns) {
  if (ns == std::numeric_limits<int64_t>::min()) return absl::InfinitePast();
  if (ns == std::numeric_limits<int64_t>::max()) return absl::InfiniteFuture();
  return absl::FromUnixNanos(ns);
}

void AppendJsonString(std::string* out, std::string_view s) {
  out->push_back('"');
  for (const char c : s) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppendFormat(out, "\\u%04x", static_cast<int>(c));
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

std::string TextArrayLiteral(const std::vector<std::string>& items) {
  std::string out = "{";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out.push_back(',');
    out.push_back('"');
    for (const char c : items[i]) {
      if (c == '"' || c == '\\') out.push_back('\\');
      out.push_back(c);
    }
    out.push_back('"');
  }
  out.push_back('}');
  return out;
}

}  // namespace videogen::store::pg
