// Tenants end to end (issue 17, design.md §7): the real server with
// --auth=keys on SQLite, keys made with `videogen-server keys`, and the real
// simulator. Checks that a missing, unknown or revoked key opens nothing,
// that tenants cannot see or touch each other's generations, that quotas
// refuse before anything reaches the upstream (counted in the sim), and that
// one tenant's burst of creates does not hold back another tenant's polls.
//
// Tests whose name contains "Slow" carry only the ctest label `slow` (see
// CMakeLists.txt), so `ctest -L e2e` stays short.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/unknown_field_set.h"
#include "httplib.h"
#include "tests/e2e/harness.h"

namespace videogen::e2e {
namespace {

using google::protobuf::UnknownField;
using google::protobuf::UnknownFieldSet;
using v1::Generation;
using v1::GenerationEvent;
using Stub = v1::VideoGeneration::Stub;

// ---- google.rpc details, read off the wire ---------------------------------
//
// The e2e targets link only the harness, not the google.rpc protos, so the
// `grpc-status-details-bin` payload (a google.rpc.Status) is decoded by field
// number: Status.details = 3 (Any: type_url = 1, value = 2).

struct RpcDetails {
  bool parsed = false;
  std::vector<std::string> type_urls;
  // QuotaFailure.violations (1): subject (1), description (2).
  std::vector<std::pair<std::string, std::string>> violations;
  // ErrorInfo: reason (1), domain (2), metadata (3: key 1, value 2).
  std::string reason;
  std::string domain;
  std::map<std::string, std::string> metadata;
  // RetryInfo.retry_delay (1): Duration seconds (1), nanos (2).
  std::optional<absl::Duration> retry_delay;
};

std::vector<std::string> Strings(const UnknownFieldSet& set, int number) {
  std::vector<std::string> out;
  for (int i = 0; i < set.field_count(); ++i) {
    const UnknownField& f = set.field(i);
    if (f.number() == number && f.type() == UnknownField::TYPE_LENGTH_DELIMITED)
      out.push_back(f.length_delimited());
  }
  return out;
}

int64_t Varint(const UnknownFieldSet& set, int number) {
  for (int i = 0; i < set.field_count(); ++i) {
    const UnknownField& f = set.field(i);
    if (f.number() == number && f.type() == UnknownField::TYPE_VARINT)
      return static_cast<int64_t>(f.varint());
  }
  return 0;
}

std::string First(const UnknownFieldSet& set, int number) {
  std::vector<std::string> v = Strings(set, number);
  return v.empty() ? "" : v[0];
}

// UnknownFieldSet cannot be copied; it lives on the heap.
std::unique_ptr<UnknownFieldSet> Parse(const std::string& bytes) {
  auto set = std::make_unique<UnknownFieldSet>();
  set->ParseFromString(bytes);
  return set;
}

RpcDetails DecodeDetails(const std::string& status_bin) {
  RpcDetails d;
  UnknownFieldSet status;
  if (status_bin.empty() || !status.ParseFromString(status_bin)) return d;
  d.parsed = true;
  for (const std::string& any_bytes : Strings(status, 3)) {
    auto any = Parse(any_bytes);
    const std::string type_url = First(*any, 1);
    auto value = Parse(First(*any, 2));
    d.type_urls.push_back(type_url);
    if (absl::EndsWith(type_url, "/google.rpc.QuotaFailure")) {
      for (const std::string& v : Strings(*value, 1)) {
        auto violation = Parse(v);
        d.violations.emplace_back(First(*violation, 1), First(*violation, 2));
      }
    } else if (absl::EndsWith(type_url, "/google.rpc.ErrorInfo")) {
      d.reason = First(*value, 1);
      d.domain = First(*value, 2);
      for (const std::string& entry : Strings(*value, 3)) {
        auto kv = Parse(entry);
        d.metadata[First(*kv, 1)] = First(*kv, 2);
      }
    } else if (absl::EndsWith(type_url, "/google.rpc.RetryInfo")) {
      auto duration = Parse(First(*value, 1));
      d.retry_delay = absl::Seconds(Varint(*duration, 1)) +
                      absl::Nanoseconds(Varint(*duration, 2));
    }
  }
  return d;
}

// ---- small helpers ---------------------------------------------------------

// A sim whose jobs take `queued` + `generating`.
Sim SimTaking(absl::Duration queued, absl::Duration generating,
              std::vector<std::string> more = {}) {
  more.push_back("--queued_for=" + absl::FormatDuration(queued));
  more.push_back("--generating_for=" + absl::FormatDuration(generating));
  return StartSim(more);
}

v1::GenerateRequest Request(const std::string& request_id,
                            const std::string& prompt = "a red fox") {
  v1::GenerateRequest r = SimpleRequest(prompt);
  r.set_request_id(request_id);
  r.set_duration_seconds(5);
  return r;
}

grpc::Status CreateGen(Stub* stub, const v1::GenerateRequest& r,
                       Generation* out,
                       absl::Duration timeout = absl::Seconds(20)) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return stub->CreateGeneration(&ctx, r, out);
}

Generation MustCreate(Stub* stub, const v1::GenerateRequest& r) {
  Generation g;
  grpc::Status s = CreateGen(stub, r, &g);
  EXPECT_TRUE(s.ok()) << s.error_code() << " " << s.error_message();
  return g;
}

grpc::Status GetGen(Stub* stub, const std::string& id, Generation* out) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::GetGenerationRequest req;
  req.set_id(id);
  return stub->GetGeneration(&ctx, req, out);
}

std::vector<Generation> ListAll(Stub* stub) {
  std::vector<Generation> out;
  v1::ListGenerationsRequest req;
  req.set_page_size(100);
  for (int page = 0; page < 100; ++page) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    v1::ListGenerationsResponse resp;
    grpc::Status s = stub->ListGenerations(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    if (!s.ok()) break;
    for (const Generation& g : resp.generations()) out.push_back(g);
    if (resp.next_page_token().empty()) break;
    req.set_page_token(resp.next_page_token());
  }
  return out;
}

std::set<std::string> IdsOf(const std::vector<Generation>& gs) {
  std::set<std::string> ids;
  for (const Generation& g : gs) ids.insert(g.id());
  return ids;
}

// Watches `id` to its end; the last generation seen (state UNSPECIFIED when
// the stream failed or timed out).
Generation WatchToEnd(Stub* stub, const std::string& id,
                      absl::Duration timeout = absl::Seconds(30)) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  v1::WatchGenerationRequest req;
  req.set_id(id);
  auto reader = stub->WatchGeneration(&ctx, req);
  StreamResult r = ReadAll(reader.get());
  Generation last;
  for (const GenerationEvent& e : r.events) {
    if (e.type() != GenerationEvent::TYPE_HEARTBEAT) last = e.generation();
  }
  EXPECT_TRUE(r.status.ok()) << id << ": " << r.status.error_message();
  if (!r.status.ok()) return Generation();
  return last;
}

int64_t SimSubmits(const Sim& sim) {
  nlohmann::json stats = sim.Stats();
  return stats.contains("submits") ? stats["submits"].get<int64_t>() : -1;
}

// ---- servers with tenants
// ----------------------------------------------------

// A server whose tenants' keys exist before it starts: a running server on
// SQLite holds its data dir's lock, so `videogen-server keys` must run first
// (see RevokeWhileRunning below).
struct Tenanted {
  Server server;
  std::vector<std::string> store_flags;
  std::map<std::string, nlohmann::json> keys;  // tenant -> `keys create`
  std::unique_ptr<Stub> StubOf(const std::string& tenant) const {
    return server.Stub(keys.at(tenant)["key"].get<std::string>());
  }
};

using TenantFlags =
    std::vector<std::pair<std::string, std::vector<std::string>>>;

Tenanted StartWithTenants(const Sim& sim, const TenantFlags& tenants,
                          std::vector<std::string> flags = {},
                          std::vector<std::string> store_flags = {}) {
  Tenanted t;
  if (store_flags.empty()) {
    store_flags = {"--store=sqlite", "--data_dir=" + FreshDir("tenants")};
  }
  t.store_flags = store_flags;
  for (const auto& [tenant, key_flags] : tenants) {
    t.keys[tenant] = CreateKey(store_flags, tenant, key_flags);
  }
  flags.insert(flags.end(), store_flags.begin(), store_flags.end());
  t.server = StartServer(sim.url, flags);
  return t;
}

// ---- the seven RPCs --------------------------------------------------------

struct Rpc {
  std::string name;
  // The RPC's status, and how many events it streamed (streams only).
  std::function<grpc::Status(Stub*, int* events)> call;
};

grpc::Status Drain(grpc::ClientReaderInterface<GenerationEvent>* reader,
                   int* events) {
  GenerationEvent e;
  while (reader->Read(&e)) ++*events;
  return reader->Finish();
}

void Deadline(grpc::ClientContext* ctx) {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
}

// All seven RPCs of the service. Get, Watch and Cancel name `id` (an existing
// generation, so a failure cannot be a plain NOT_FOUND).
std::vector<Rpc> AllRpcs(const std::string& id) {
  return {
      {"Generate",
       [](Stub* s, int* n) {
         grpc::ClientContext ctx;
         Deadline(&ctx);
         auto r = s->Generate(&ctx, Request("unauth-generate"));
         return Drain(r.get(), n);
       }},
      {"CreateGeneration",
       [](Stub* s, int*) {
         grpc::ClientContext ctx;
         Deadline(&ctx);
         Generation g;
         return s->CreateGeneration(&ctx, Request("unauth-create"), &g);
       }},
      {"WatchGeneration",
       [id](Stub* s, int* n) {
         grpc::ClientContext ctx;
         Deadline(&ctx);
         v1::WatchGenerationRequest req;
         req.set_id(id);
         auto r = s->WatchGeneration(&ctx, req);
         return Drain(r.get(), n);
       }},
      {"WatchGenerations",
       [](Stub* s, int* n) {
         grpc::ClientContext ctx;
         Deadline(&ctx);
         auto r = s->WatchGenerations(&ctx, v1::WatchGenerationsRequest());
         return Drain(r.get(), n);
       }},
      {"GetGeneration",
       [id](Stub* s, int*) {
         grpc::ClientContext ctx;
         Deadline(&ctx);
         v1::GetGenerationRequest req;
         req.set_id(id);
         Generation g;
         return s->GetGeneration(&ctx, req, &g);
       }},
      {"ListGenerations",
       [](Stub* s, int*) {
         grpc::ClientContext ctx;
         Deadline(&ctx);
         v1::ListGenerationsResponse resp;
         return s->ListGenerations(&ctx, v1::ListGenerationsRequest(), &resp);
       }},
      {"CancelGeneration",
       [id](Stub* s, int*) {
         grpc::ClientContext ctx;
         Deadline(&ctx);
         v1::CancelGenerationRequest req;
         req.set_id(id);
         Generation g;
         return s->CancelGeneration(&ctx, req, &g);
       }},
  };
}

// Every RPC through `stub` is UNAUTHENTICATED, streams send nothing, and no
// message echoes `secret` (the key that was sent).
void ExpectAllUnauthenticated(Stub* stub, const std::string& id,
                              const std::string& what,
                              const std::string& secret) {
  for (const Rpc& rpc : AllRpcs(id)) {
    int events = 0;
    grpc::Status s = rpc.call(stub, &events);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << what << " " << rpc.name << ": " << s.error_code() << " "
        << s.error_message();
    EXPECT_EQ(events, 0) << what << " " << rpc.name << " streamed events";
    if (!secret.empty()) {
      EXPECT_FALSE(absl::StrContains(s.error_message(), secret))
          << what << " " << rpc.name << " echoes the key";
    }
  }
}

// `videogen-server keys revoke KEY_ID` against a store; its exit code.
int RevokeKey(const std::vector<std::string>& store_flags,
              const std::string& key_id, std::string* err) {
  std::vector<std::string> argv = {Bins().server, "keys", "revoke", key_id};
  argv.insert(argv.end(), store_flags.begin(), store_flags.end());
  CommandResult r = RunCommand(argv);
  *err = r.err;
  if (r.exit_code == 0) {
    nlohmann::json out = nlohmann::json::parse(r.out, nullptr, false);
    EXPECT_EQ(out["key_id"], key_id) << r.out;
  }
  return r.exit_code;
}

// ---- authentication --------------------------------------------------------

TEST(TenantsE2e, NoUnknownOrRevokedKeyIsUnauthenticatedOnEveryRpc) {
  Sim sim = StartSim();
  Tenanted t = StartWithTenants(sim, {{"alpha", {}}, {"beta", {}}});
  const std::string key = t.keys["alpha"]["key"];
  auto good = t.StubOf("alpha");
  // A real generation, so Get/Watch/Cancel have something they could leak.
  Generation g = MustCreate(good.get(), Request("real"));
  ASSERT_FALSE(g.id().empty());
  const int64_t submits = SimSubmits(sim);
  ASSERT_EQ(submits, 1);

  ExpectAllUnauthenticated(t.server.Stub("").get(), g.id(), "no key", "");
  // The right key_id with another secret, a well-formed key nobody issued,
  // and a token that is not a videogen key at all.
  std::string forged = key;
  char& c = forged[forged.size() - 5];  // inside the secret
  c = c == 'A' ? 'B' : 'A';
  ExpectAllUnauthenticated(t.server.Stub(forged).get(), g.id(), "forged key",
                           forged);
  ExpectAllUnauthenticated(
      t.server
          .Stub("vgk_k_0123456789abcdef_"
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
          .get(),
      g.id(), "unissued key", "");
  ExpectAllUnauthenticated(t.server.Stub("not-a-videogen-key").get(), g.id(),
                           "garbage token", "not-a-videogen-key");

  // Revoked: the SQLite server holds its store, so the key is revoked while
  // the server is stopped (RevokeWhileRunning covers a running server).
  Generation got;
  ASSERT_TRUE(GetGen(good.get(), g.id(), &got).ok());
  t.server.process->Signal(SIGTERM);
  ASSERT_TRUE(t.server.process->Wait(absl::Seconds(20)).has_value());
  std::string err;
  ASSERT_EQ(RevokeKey(t.store_flags, t.keys["alpha"]["key_id"], &err), 0)
      << err;
  Server again = StartServer(sim.url, t.store_flags);
  ExpectAllUnauthenticated(again.Stub(key).get(), g.id(), "revoked key", key);
  // Only that key: beta's still works.
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::ListGenerationsResponse resp;
    EXPECT_TRUE(again.Stub(t.keys["beta"]["key"])
                    ->ListGenerations(&ctx, v1::ListGenerationsRequest(), &resp)
                    .ok());
  }

  // Nothing any of them did reached the upstream, and A's generation was
  // not cancelled by the unauthenticated Cancels.
  EXPECT_EQ(SimSubmits(sim), submits);
  Generation after;
  ASSERT_TRUE(GetGen(again.stub.get(), g.id(), &after).ok());
  EXPECT_NE(after.state(), Generation::STATE_CANCELLED);
}

// A key revoked with `videogen-server keys revoke` while the server runs is
// refused within seconds (the server caches keys for up to 5 s).
void RevokeWhileRunning(const std::vector<std::string>& store_flags) {
  Sim sim = StartSim();
  Tenanted t = StartWithTenants(sim, {{"alpha", {}}}, {}, store_flags);
  const std::string key = t.keys["alpha"]["key"];
  auto stub = t.StubOf("alpha");
  Generation g = MustCreate(stub.get(), Request("before-revoke"));
  Generation got;
  ASSERT_TRUE(GetGen(stub.get(), g.id(), &got).ok());

  std::string err;
  ASSERT_EQ(RevokeKey(store_flags, t.keys["alpha"]["key_id"], &err), 0)
      << "keys revoke against the running server's store failed: " << err;
  const absl::Time revoked = absl::Now();
  grpc::Status s;
  while (absl::Now() - revoked < absl::Seconds(15)) {
    s = GetGen(stub.get(), g.id(), &got);
    if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED)
      << "revoked key still accepted after 15s";
  const absl::Duration took = absl::Now() - revoked;
  EXPECT_LT(took, absl::Seconds(8))
      << "revocation took longer than the 5 s key cache";
  std::printf("revocation: refused %s after `keys revoke` returned\n",
              absl::FormatDuration(took).c_str());
  ExpectAllUnauthenticated(stub.get(), g.id(), "revoked key", key);
}

// The server holds the data dir's lock file; `keys` opens the SQLite file
// beside it without the lock and without migrating
// (SqliteOptions::Role::kKeyAdmin).
TEST(TenantsE2e, RevokedKeyIsRefusedWithinSecondsOnRunningSqlite) {
  RevokeWhileRunning(
      {"--store=sqlite", "--data_dir=" + FreshDir("revoke-sqlite")});
}

// `keys create` and `keys list` work beside a running SQLite server too,
// and the data dir still takes one server only.
TEST(TenantsE2e, KeysCommandRunsBesideASqliteServerThatStaysTheOnlyOne) {
  Sim sim = StartSim();
  const std::vector<std::string> store_flags = {
      "--store=sqlite", "--data_dir=" + FreshDir("keys-beside")};
  Tenanted t = StartWithTenants(sim, {{"alpha", {}}}, {}, store_flags);
  nlohmann::json beta = CreateKey(store_flags, "beta");
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::ListGenerationsResponse resp;
    grpc::Status s =
        t.server.Stub(beta["key"].get<std::string>())
            ->ListGenerations(&ctx, v1::ListGenerationsRequest(), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
  std::vector<std::string> list = {Bins().server, "keys", "list"};
  list.insert(list.end(), store_flags.begin(), store_flags.end());
  CommandResult listed = RunCommand(list);
  ASSERT_EQ(listed.exit_code, 0) << listed.err;
  EXPECT_TRUE(absl::StrContains(listed.out, "\"tenant\":\"beta\""))
      << listed.out;
  EXPECT_FALSE(absl::StrContains(listed.out, beta["key"].get<std::string>()));

  std::vector<std::string> second = {Bins().server, "--auth=none", "--simulate",
                                     "--listen=127.0.0.1:0"};
  second.insert(second.end(), store_flags.begin(), store_flags.end());
  CommandResult refused = RunCommand(second, absl::Seconds(15));
  EXPECT_EQ(refused.exit_code, 1) << refused.err;
  EXPECT_TRUE(absl::StrContains(refused.out + refused.err,
                                "in use by another videogen server"))
      << refused.out << refused.err;
}

// Needs VIDEOGEN_TEST_DATABASE_URL (scripts/pg.sh); makes its own database.
TEST(TenantsE2e, RevokedKeyIsRefusedWithinSecondsOnRunningPostgres) {
  const char* base = std::getenv("VIDEOGEN_TEST_DATABASE_URL");
  if (base == nullptr || *base == '\0') {
    GTEST_SKIP() << "VIDEOGEN_TEST_DATABASE_URL is not set";
  }
  const std::string name = absl::StrCat("vge2e_revoke_", getpid());
  // One statement per psql -c: CREATE DATABASE cannot run in a transaction.
  auto psql = [&](const std::string& sql) {
    return RunCommand(
        {"/usr/bin/psql", base, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql});
  };
  psql(absl::StrCat("DROP DATABASE IF EXISTS ", name, " WITH (FORCE)"));
  CommandResult made = psql(absl::StrCat("CREATE DATABASE ", name));
  ASSERT_EQ(made.exit_code, 0) << made.err;
  // postgresql://user@host:port/DB[?...] with our database instead.
  std::string url = base;
  const size_t path = url.find('/', url.find("://") + 3);
  ASSERT_NE(path, std::string::npos) << "not a URI: " << url;
  const size_t query = url.find('?', path);
  url = absl::StrCat(url.substr(0, path + 1), name,
                     query == std::string::npos ? "" : url.substr(query));
  RevokeWhileRunning({"--store=postgres", "--database_url=" + url});
  psql(absl::StrCat("DROP DATABASE IF EXISTS ", name, " WITH (FORCE)"));
}

// ---- isolation -------------------------------------------------------------

// Reads a WatchGenerations stream on its own thread, remembering which
// generation ids (and terminal ids) it saw.
class Firehose {
 public:
  explicit Firehose(Stub* stub) {
    reader_ = stub->WatchGenerations(&ctx_, v1::WatchGenerationsRequest());
    thread_ = std::thread([this] {
      GenerationEvent e;
      while (reader_->Read(&e)) {
        if (e.type() == GenerationEvent::TYPE_HEARTBEAT) continue;
        std::lock_guard<std::mutex> lock(mu_);
        seen_.insert(e.generation().id());
        if (e.generation().done()) done_.insert(e.generation().id());
      }
      status_ = reader_->Finish();
    });
  }
  ~Firehose() { Stop(); }

  // True once every id in `ids` was seen terminal (waits up to `timeout`).
  bool WaitDone(const std::set<std::string>& ids, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (std::includes(done_.begin(), done_.end(), ids.begin(), ids.end()))
          return true;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

  std::set<std::string> Stop() {
    if (thread_.joinable()) {
      ctx_.TryCancel();
      thread_.join();
    }
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderInterface<GenerationEvent>> reader_;
  std::thread thread_;
  std::mutex mu_;
  std::set<std::string> seen_;
  std::set<std::string> done_;
  grpc::Status status_;
};

// The NOT_FOUND message for `id`, with the id itself blanked out, so the
// answers for "another tenant's" and "no such" generation can be compared.
std::string Blanked(const grpc::Status& s, const std::string& id) {
  return absl::StrReplaceAll(s.error_message(), {{id, "<id>"}});
}

TEST(TenantsE2e, TenantsSeeOnlyTheirOwnGenerationsAndAdminSeesAll) {
  Sim sim = SimTaking(absl::Seconds(1), absl::Seconds(1));
  Tenanted t = StartWithTenants(sim, {{"alpha", {}}, {"beta", {}}});
  auto a = t.StubOf("alpha");
  auto b = t.StubOf("beta");
  Stub* admin = t.server.stub.get();

  // A generation of A's that is live while B's firehose starts: B must not
  // get its opening SNAPSHOT either.
  Generation a0 = MustCreate(a.get(), Request("a-0"));
  Firehose a_fire(a.get()), b_fire(b.get()), admin_fire(admin);
  Generation a1 = MustCreate(a.get(), Request("a-1"));
  ASSERT_EQ(a1.tenant(), "alpha");

  // B: NOT_FOUND on Get, Watch and Cancel, worded exactly like an id that
  // does not exist.
  const std::string missing = "AAAAAAAAAAAAAAAAAAAAAA";
  Generation g;
  grpc::Status get_other = GetGen(b.get(), a1.id(), &g);
  grpc::Status get_missing = GetGen(b.get(), missing, &g);
  EXPECT_EQ(get_other.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Blanked(get_other, a1.id()), Blanked(get_missing, missing));
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::WatchGenerationRequest req;
    req.set_id(a1.id());
    auto r = b->WatchGeneration(&ctx, req);
    int events = 0;
    grpc::Status s = Drain(r.get(), &events);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
    EXPECT_EQ(events, 0);
    EXPECT_EQ(Blanked(s, a1.id()), Blanked(get_missing, missing));
  }
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::CancelGenerationRequest req;
    req.set_id(a1.id());
    grpc::Status s = b->CancelGeneration(&ctx, req, &g);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
    EXPECT_EQ(Blanked(s, a1.id()), Blanked(get_missing, missing));
  }
  // B's cancel did nothing: A's generation runs to the end.
  EXPECT_EQ(WatchToEnd(a.get(), a1.id()).state(), Generation::STATE_COMPLETED);
  EXPECT_EQ(WatchToEnd(a.get(), a0.id()).state(), Generation::STATE_COMPLETED);

  // B's own generation, made after A's finished, while B's firehose was
  // open the whole time.
  Generation b1 = MustCreate(b.get(), Request("b-1"));
  EXPECT_EQ(b1.tenant(), "beta");
  EXPECT_EQ(WatchToEnd(b.get(), b1.id()).state(), Generation::STATE_COMPLETED);

  // A cannot see B's either.
  EXPECT_EQ(GetGen(a.get(), b1.id(), &g).error_code(),
            grpc::StatusCode::NOT_FOUND);
  // The admin key can.
  ASSERT_TRUE(GetGen(admin, a1.id(), &g).ok());
  EXPECT_EQ(g.tenant(), "alpha");
  ASSERT_TRUE(GetGen(admin, b1.id(), &g).ok());
  EXPECT_EQ(g.tenant(), "beta");

  // Lists.
  EXPECT_EQ(IdsOf(ListAll(a.get())), (std::set<std::string>{a0.id(), a1.id()}));
  EXPECT_EQ(IdsOf(ListAll(b.get())), (std::set<std::string>{b1.id()}));
  EXPECT_EQ(IdsOf(ListAll(admin)),
            (std::set<std::string>{a0.id(), a1.id(), b1.id()}));

  // Firehoses: each saw its own to the end; B and A saw nothing else.
  EXPECT_TRUE(
      admin_fire.WaitDone({a0.id(), a1.id(), b1.id()}, absl::Seconds(10)));
  EXPECT_TRUE(a_fire.WaitDone({a0.id(), a1.id()}, absl::Seconds(10)));
  EXPECT_TRUE(b_fire.WaitDone({b1.id()}, absl::Seconds(10)));
  EXPECT_EQ(b_fire.Stop(), (std::set<std::string>{b1.id()}));
  EXPECT_EQ(a_fire.Stop(), (std::set<std::string>{a0.id(), a1.id()}));
  EXPECT_EQ(admin_fire.Stop(),
            (std::set<std::string>{a0.id(), a1.id(), b1.id()}));
  EXPECT_EQ(SimSubmits(sim), 3);
}

TEST(TenantsE2e, RequestIdIsPerTenant) {
  Sim sim = StartSim();
  Tenanted t = StartWithTenants(sim, {{"alpha", {}}, {"beta", {}}});
  auto a = t.StubOf("alpha");
  auto b = t.StubOf("beta");

  // The same request_id and parameters from two tenants: two generations.
  Generation ga = MustCreate(a.get(), Request("shared-1"));
  Generation gb = MustCreate(b.get(), Request("shared-1"));
  EXPECT_NE(ga.id(), gb.id());
  EXPECT_EQ(ga.tenant(), "alpha");
  EXPECT_EQ(gb.tenant(), "beta");
  // Still idempotent within each tenant.
  EXPECT_EQ(MustCreate(a.get(), Request("shared-1")).id(), ga.id());
  EXPECT_EQ(MustCreate(b.get(), Request("shared-1")).id(), gb.id());

  // Another tenant's request_id with other parameters is no conflict (an
  // ALREADY_EXISTS here would tell B that A used the id).
  Generation ga2 = MustCreate(a.get(), Request("shared-2", "a cat"));
  Generation gb2 = MustCreate(b.get(), Request("shared-2", "a dog"));
  EXPECT_NE(ga2.id(), gb2.id());
  EXPECT_EQ(gb2.request().prompt(), "a dog");

  EXPECT_EQ(WatchToEnd(a.get(), ga.id()).state(), Generation::STATE_COMPLETED);
  EXPECT_EQ(WatchToEnd(b.get(), gb.id()).state(), Generation::STATE_COMPLETED);
  EXPECT_EQ(SimSubmits(sim), 4);
}

// ---- quotas ----------------------------------------------------------------

// A quota refusal: RESOURCE_EXHAUSTED naming `limit`, with QuotaFailure and
// ErrorInfo details.
void ExpectQuotaRefusal(const grpc::Status& s, const std::string& limit,
                        const std::string& tenant) {
  ASSERT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), limit)) << s.error_message();
  RpcDetails d = DecodeDetails(s.error_details());
  ASSERT_TRUE(d.parsed) << "no grpc-status-details-bin";
  ASSERT_EQ(d.violations.size(), 1u);
  EXPECT_EQ(d.violations[0].first, "tenant:" + tenant);
  EXPECT_TRUE(absl::StrContains(d.violations[0].second, limit));
  EXPECT_EQ(d.reason, "QUOTA_EXCEEDED");
  EXPECT_EQ(d.domain, "videogen");
  EXPECT_EQ(d.metadata["limit"], limit);
}

TEST(TenantsE2e, FiftyConcurrentCreatesAgainstMaxConcurrentFiveMakeFiveJobs) {
  // Nothing finishes during the test, so no slot frees up.
  Sim sim = SimTaking(absl::Seconds(60), absl::Seconds(1));
  Tenanted t = StartWithTenants(sim, {{"capped", {"--max_concurrent=5"}}});
  auto capped = t.StubOf("capped");
  constexpr int kCreates = 50;
  std::vector<grpc::Status> results(kCreates);
  std::vector<Generation> gens(kCreates);
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kCreates; ++i) {
    threads.emplace_back([&, i] {
      ready++;
      while (ready.load() < kCreates) std::this_thread::yield();
      results[i] = CreateGen(capped.get(), Request(absl::StrCat("mc-", i)),
                             &gens[i], absl::Seconds(30));
    });
  }
  for (auto& t : threads) t.join();

  int ok = 0;
  int refused = 0;
  std::set<std::string> ids;
  for (int i = 0; i < kCreates; ++i) {
    if (results[i].ok()) {
      ++ok;
      ids.insert(gens[i].id());
    } else if (results[i].error_code() ==
               grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++refused;
      ExpectQuotaRefusal(results[i], "max_concurrent", "capped");
      // max_concurrent frees up when a generation ends: no promised time.
      EXPECT_FALSE(DecodeDetails(results[i].error_details()).retry_delay);
    } else {
      ADD_FAILURE() << "create " << i << ": " << results[i].error_code() << " "
                    << results[i].error_message();
    }
  }
  EXPECT_EQ(ok, 5);
  EXPECT_EQ(refused, kCreates - 5);
  EXPECT_EQ(ids.size(), 5u);
  // Exactly five jobs upstream, and five POSTs: the refused ones sent
  // nothing.
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(SimSubmits(sim), 5);
  EXPECT_EQ(SimRequests(sim, "POST "), 5);
  EXPECT_EQ(ListAll(capped.get()).size(), 5u);
}

TEST(TenantsE2e, CreatesPerMinuteRefusesWithRetryInfo) {
  Sim sim = StartSim();
  Tenanted t = StartWithTenants(sim, {{"rated", {"--creates_per_minute=3"}}});
  auto key = t.StubOf("rated");
  for (int i = 0; i < 3; ++i) MustCreate(key.get(), Request(absl::StrCat(i)));
  Generation g;
  grpc::Status s = CreateGen(key.get(), Request("fourth"), &g);
  ExpectQuotaRefusal(s, "creates_per_minute", "rated");
  RpcDetails d = DecodeDetails(s.error_details());
  ASSERT_TRUE(d.retry_delay.has_value());
  EXPECT_GT(*d.retry_delay, absl::ZeroDuration());
  EXPECT_LE(*d.retry_delay, absl::Minutes(1));
  EXPECT_EQ(SimSubmits(sim), 3);
}

TEST(TenantsE2e, SecondsBudgetAdmitsFourClipsAndTheFifthOnlyAfterOneFails) {
  // Every job ends in `error` (not billed) about 4 s after it was made.
  Sim sim = SimTaking(absl::Seconds(3), absl::Seconds(1), {"--error_rate=1"});
  Tenanted t = StartWithTenants(
      sim, {{"budget", {"--video_seconds_budget=20", "--budget_period=720h"}}});
  auto key = t.StubOf("budget");
  std::vector<Generation> four;
  for (int i = 0; i < 4; ++i) {
    four.push_back(MustCreate(key.get(), Request(absl::StrCat("clip-", i))));
  }
  ASSERT_EQ(SimSubmits(sim), 4);

  auto any_failed = [&] {
    for (const Generation& g : four) {
      Generation now;
      if (GetGen(key.get(), g.id(), &now).ok() &&
          now.state() == Generation::STATE_FAILED) {
        return true;
      }
    }
    return false;
  };
  // Refused while all four hold their seconds, admitted once one failed.
  Generation fifth;
  grpc::Status s = CreateGen(key.get(), Request("clip-4"), &fifth);
  ExpectQuotaRefusal(s, "video_seconds_budget", "budget");
  EXPECT_EQ(SimSubmits(sim), 4) << "the refused clip reached the upstream";
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  bool admitted = false;
  while (absl::Now() < deadline) {
    const bool failed_before = any_failed();
    s = CreateGen(key.get(), Request("clip-4"), &fifth);
    if (s.ok()) {
      EXPECT_TRUE(any_failed()) << "admitted before any clip failed";
      admitted = true;
      break;
    }
    ExpectQuotaRefusal(s, "video_seconds_budget", "budget");
    EXPECT_FALSE(failed_before)
        << "refused although a failed clip had given its seconds back";
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(admitted);
  EXPECT_EQ(fifth.request().duration_seconds(), 5);
  EXPECT_EQ(SimSubmits(sim), 5);
}

// ---- fairness --------------------------------------------------------------

// The sim's transition times of a job, from its usage-log row.
struct SimTimes {
  absl::Time generating;
  absl::Time completed;
};

// Client receive times of `id`'s first GENERATING and COMPLETED events.
struct SeenTimes {
  absl::Time generating = absl::InfiniteFuture();
  absl::Time completed = absl::InfiniteFuture();
  std::string upstream_id;
};

SeenTimes WatchTimes(Stub* stub, const std::string& id) {
  SeenTimes t;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  v1::WatchGenerationRequest req;
  req.set_id(id);
  auto reader = stub->WatchGeneration(&ctx, req);
  GenerationEvent e;
  while (reader->Read(&e)) {
    const absl::Time now = absl::Now();
    const Generation& g = e.generation();
    if (!g.upstream_id().empty()) t.upstream_id = g.upstream_id();
    if (g.state() == Generation::STATE_GENERATING &&
        t.generating == absl::InfiniteFuture()) {
      t.generating = now;
    }
    if (g.state() == Generation::STATE_COMPLETED) t.completed = now;
  }
  reader->Finish();
  return t;
}

// A create of tenant A in flight through the callback API.
struct PendingCreate {
  grpc::ClientContext ctx;
  v1::GenerateRequest request;
  Generation response;
};

// Tenant A queues 300 creates at once; the upstream is rate limited to 10
// requests/s, which A's submits and the polls of A's accepted jobs
// saturate. While A's backlog drains (it would take over a minute), tenant B
// runs generations one after another. B's state changes must reach B within
// the poll schedule (interval plus jitter) plus at most one more interval
// of the sim's transition times, and B's creates must not wait behind A's
// backlog.
//
// The upstream client lets tenants take turns at the rate limit and sends
// each tenant's polls before its own submits (upstream/admission_queue.h);
// the tracker caps outstanding submits per tenant. Before that, one FIFO
// queue put B's polls behind A's polls and submits (lag 1.6-2.7 s against
// the 2.5 s bound), and with polls strictly before all submits A's polls
// held B's first create back for 6 s.
TEST(TenantsE2eSlow, CreateFloodDoesNotDelayAnotherTenantsPolls) {
  constexpr absl::Duration kQueued = absl::Seconds(2);
  constexpr absl::Duration kGenerating = absl::Seconds(2);
  constexpr absl::Duration kPollInterval = absl::Seconds(1);
  constexpr double kRateLimit = 10;
  Sim sim = SimTaking(kQueued, kGenerating);
  Tenanted t =
      StartWithTenants(sim, {{"flood", {}}, {"quiet", {}}},
                       {"--poll_interval=1s", "--poll_initial_delay=100ms",
                        "--upstream_rate_limit=10"});
  auto a = t.StubOf("flood");
  auto b = t.StubOf("quiet");

  constexpr int kFlood = 300;
  std::vector<std::unique_ptr<PendingCreate>> flood;
  std::atomic<int> answered{0};
  for (int i = 0; i < kFlood; ++i) {
    auto p = std::make_unique<PendingCreate>();
    p->request = Request(absl::StrCat("flood-", i));
    p->ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
    a->async()->CreateGeneration(&p->ctx, &p->request, &p->response,
                                 [&answered](grpc::Status) { answered++; });
    flood.push_back(std::move(p));
  }
  // Let A's backlog build up and its accepted jobs start polling.
  absl::SleepFor(absl::Seconds(2));

  const absl::Time measure_start = absl::Now();
  const int64_t requests_before = SimRequests(sim);
  struct Run {
    std::string id;
    absl::Duration create_latency;
    SeenTimes seen;
  };
  std::vector<Run> runs;
  for (int i = 0; i < 3; ++i) {
    const absl::Time t0 = absl::Now();
    Generation g = MustCreate(b.get(), Request(absl::StrCat("quiet-", i)));
    Run run{g.id(), absl::Now() - t0, {}};
    run.seen = WatchTimes(b.get(), g.id());
    runs.push_back(std::move(run));
  }
  const absl::Duration measured = absl::Now() - measure_start;
  const int64_t requests = SimRequests(sim) - requests_before;
  const int backlog = kFlood - answered.load();

  // The flood was real: the upstream ran at its rate limit and A still had
  // creates waiting when B was done.
  EXPECT_GE(static_cast<double>(requests),
            0.7 * kRateLimit * absl::ToDoubleSeconds(measured))
      << requests << " upstream requests in " << measured;
  EXPECT_GE(backlog, 100) << "A's creates were not held back at all";

  // The sim's transition times of B's jobs, from the usage log.
  std::map<std::string, absl::Time> created_by_upstream_id;
  for (const nlohmann::json& row : FullUsageLog(sim)) {
    absl::Time t;
    std::string err;
    ASSERT_TRUE(absl::ParseTime(absl::RFC3339_full,
                                row["created"].get<std::string>(), &t, &err))
        << err;
    created_by_upstream_id[row["inference_id"].get<std::string>()] = t;
  }
  // Poll schedule: up to interval * 1.2 (jitter) after a transition; the
  // flood may add at most one more interval; 300 ms for the machine.
  const absl::Duration bound =
      kPollInterval * 1.2 + kPollInterval + absl::Milliseconds(300);
  for (const Run& run : runs) {
    ASSERT_EQ(created_by_upstream_id.count(run.seen.upstream_id), 1u) << run.id;
    const absl::Time created = created_by_upstream_id[run.seen.upstream_id];
    const absl::Duration generating_lag =
        run.seen.generating - (created + kQueued);
    const absl::Duration completed_lag =
        run.seen.completed - (created + kQueued + kGenerating);
    EXPECT_LE(generating_lag, bound) << run.id;
    EXPECT_LE(completed_lag, bound) << run.id;
    EXPECT_GE(completed_lag, -absl::Milliseconds(50)) << run.id;
    // Creates are shared fairly: B's create takes a turn among A's
    // submits instead of waiting behind A's 200-odd (a minute or more).
    EXPECT_LE(run.create_latency, kPollInterval * 5) << run.id;
    std::printf("fairness: %s create %s, generating lag %s, completed lag %s\n",
                run.id.c_str(),
                absl::FormatDuration(run.create_latency).c_str(),
                absl::FormatDuration(generating_lag).c_str(),
                absl::FormatDuration(completed_lag).c_str());
  }
  std::printf("fairness: %lld upstream requests in %s, A backlog %d\n",
              static_cast<long long>(requests),
              absl::FormatDuration(measured).c_str(), backlog);

  // Stop A's creates and wait for their callbacks before the contexts go.
  for (auto& p : flood) p->ctx.TryCancel();
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (answered.load() < kFlood && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_EQ(answered.load(), kFlood);
}

}  // namespace
}  // namespace videogen::e2e
