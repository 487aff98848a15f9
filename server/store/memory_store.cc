#include "server/store/memory_store.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/store/store_internal.h"

namespace videogen::store {

using internal::CreateTime;
using internal::UpdateTime;

Record MemoryStore::Merged(const Row& row) const {
  Record out = row.record;
  out.webhooks_gone = row.webhooks_gone;
  if (row.webhook.has_value()) {
    *out.generation.mutable_webhook_status() = *row.webhook;
  }
  return out;
}

void MemoryStore::Announce(const Row& row) {
  if (!publisher_.HasListener()) return;
  const v1::Generation& g = row.record.generation;
  Change change;
  change.id = g.id();
  change.revision = g.revision();
  change.tenant = g.tenant();
  change.generation =
      std::make_shared<const v1::Generation>(Merged(row).generation);
  publisher_.Enqueue(std::move(change));
}

absl::Status MemoryStore::Admit(const Record& record,
                                const Admission& admission) const {
  const std::string& tenant = record.generation.tenant();
  const absl::Time now = CreateTime(record.generation);
  const absl::Time minute_ago = now - absl::Seconds(60);
  const absl::Time period_start = now - admission.budget_period;
  internal::TenantUsage u;
  for (const auto& [id, row] : records_) {
    const v1::Generation& g = row.record.generation;
    if (g.tenant() != tenant) continue;
    if (!g.done()) ++u.active;
    const absl::Time created = CreateTime(g);
    if (created > minute_ago) {
      ++u.recent;
      u.oldest_recent = std::min(u.oldest_recent, created);
    }
    if (created > period_start && g.state() != v1::Generation::STATE_FAILED) {
      u.seconds += g.request().duration_seconds();
      u.oldest_counted = std::min(u.oldest_counted, created);
    }
  }
  return internal::AdmitUsage(tenant, admission, u,
                              record.generation.request().duration_seconds(),
                              now);
}

absl::Status MemoryStore::Insert(const Record& record,
                                 const Admission& admission,
                                 std::optional<Record>* existing) {
  const v1::Generation& g = record.generation;
  if (g.id().empty()) {
    return absl::InvalidArgumentError("Insert: generation id is empty");
  }
  const std::string& rid = g.request().request_id();
  {
    absl::MutexLock lock(&mu_);
    auto taken = records_.end();
    if (!rid.empty()) {
      auto it = by_request_.find(RequestKey(g.tenant(), rid));
      if (it != by_request_.end()) taken = records_.find(it->second);
    }
    if (taken == records_.end()) taken = records_.find(g.id());
    if (taken != records_.end()) {
      if (existing != nullptr) *existing = Merged(taken->second);
      return absl::AlreadyExistsError(
          taken->first == g.id()
              ? absl::StrCat("generation ", g.id(), " already exists")
              : absl::StrCat("request_id \"", rid,
                             "\" already belongs to generation ",
                             taken->first));
    }
    if (absl::Status s = Admit(record, admission); !s.ok()) return s;
    Row row{record, std::nullopt, false};
    row.record.version = 1;
    row.record.generation.clear_webhook_status();
    if (!rid.empty()) by_request_[RequestKey(g.tenant(), rid)] = g.id();
    const Row& stored = records_.emplace(g.id(), std::move(row)).first->second;
    if (g.revision() > 0) Announce(stored);
  }
  publisher_.Flush();
  return absl::OkStatus();
}

absl::Status MemoryStore::Update(const Record& record,
                                 const std::vector<Delivery>& outbox) {
  const std::string& id = record.generation.id();
  {
    absl::MutexLock lock(&mu_);
    auto it = records_.find(id);
    if (it == records_.end()) {
      return absl::NotFoundError(
          absl::StrCat("generation ", std::string(id), " is gone"));
    }
    Record& stored = it->second.record;
    if (stored.version != record.version - 1) {
      return absl::AbortedError(absl::StrCat(
          "generation ", std::string(id), " is at version ", stored.version,
          ", not ", record.version - 1, "; re-read it and retry"));
    }
    const int64_t old_revision = stored.generation.revision();
    const std::string old_owner = stored.owner;
    const absl::Time old_lease = stored.lease_until;
    const std::string& old_rid = stored.generation.request().request_id();
    const std::string& new_rid = record.generation.request().request_id();
    if (old_rid != new_rid ||
        stored.generation.tenant() != record.generation.tenant()) {
      // Neither changes in practice; keep the index right if they do.
      by_request_.erase(RequestKey(stored.generation.tenant(), old_rid));
      if (!new_rid.empty()) {
        by_request_[RequestKey(record.generation.tenant(), new_rid)] = id;
      }
    }
    stored = record;
    stored.generation.clear_webhook_status();
    // A lease renewed since the caller read the record is not shortened by
    // the caller's older copy (RenewLeases does not bump the version).
    if (stored.owner == old_owner) {
      stored.lease_until = std::max(stored.lease_until, old_lease);
    }
    for (const Delivery& d : outbox) {
      // None for a generation whose receiver said 410 (DropDeliveries).
      auto gen = d.generation_id.empty() || d.generation_id == id
                     ? it
                     : records_.find(d.generation_id);
      if (gen != records_.end() && gen->second.webhooks_gone) continue;
      Delivery copy = d;
      copy.seq = next_seq_++;
      if (copy.created == absl::InfinitePast()) copy.created = absl::Now();
      outbox_.emplace(copy.seq, std::move(copy));
    }
    if (stored.generation.revision() > old_revision) Announce(it->second);
  }
  publisher_.Flush();
  return absl::OkStatus();
}

void MemoryStore::EraseLocked(
    std::map<std::string, Row, std::less<>>::iterator it) {
  const v1::Generation& g = it->second.record.generation;
  if (!g.request().request_id().empty()) {
    by_request_.erase(RequestKey(g.tenant(), g.request().request_id()));
  }
  for (auto d = outbox_.begin(); d != outbox_.end();) {
    d = d->second.generation_id == g.id() ? outbox_.erase(d) : std::next(d);
  }
  records_.erase(it);
}

absl::Status MemoryStore::Delete(std::string_view id, int64_t version) {
  absl::MutexLock lock(&mu_);
  auto it = records_.find(id);
  if (it == records_.end()) return absl::OkStatus();
  if (it->second.record.version != version) {
    return absl::AbortedError(absl::StrCat(
        "generation ", std::string(id), " is at version ",
        it->second.record.version, ", not ", version, "; not deleted"));
  }
  EraseLocked(it);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<Record>> MemoryStore::Get(std::string_view id) {
  absl::MutexLock lock(&mu_);
  auto it = records_.find(id);
  if (it == records_.end()) return std::optional<Record>();
  return std::optional<Record>(Merged(it->second));
}

absl::StatusOr<std::optional<Record>> MemoryStore::GetByRequestId(
    std::string_view tenant, std::string_view request_id) {
  if (request_id.empty()) return std::optional<Record>();
  absl::MutexLock lock(&mu_);
  auto it = by_request_.find(
      RequestKey(std::string(tenant), std::string(request_id)));
  if (it == by_request_.end()) return std::optional<Record>();
  return std::optional<Record>(Merged(records_.at(it->second)));
}

absl::StatusOr<std::vector<Record>> MemoryStore::ClaimActive(
    std::string_view owner, absl::Time now, absl::Time until, int limit) {
  absl::MutexLock lock(&mu_);
  std::vector<Row*> free;
  for (auto& [id, row] : records_) {
    const Record& r = row.record;
    if (r.generation.done()) continue;
    if (r.owner.empty() || r.owner == owner || r.lease_until <= now) {
      free.push_back(&row);
    }
  }
  std::sort(free.begin(), free.end(), [](const Row* a, const Row* b) {
    return internal::NewerThan(
        CreateTime(b->record.generation), b->record.generation.id(),
        CreateTime(a->record.generation), a->record.generation.id());
  });
  if (limit >= 0 && free.size() > static_cast<size_t>(limit)) {
    free.resize(limit);
  }
  std::vector<Record> claimed;
  claimed.reserve(free.size());
  for (Row* row : free) {
    row->record.owner = std::string(owner);
    row->record.lease_until = until;
    ++row->record.version;
    claimed.push_back(Merged(*row));
  }
  return claimed;
}

absl::StatusOr<std::vector<std::string>> MemoryStore::RenewLeases(
    std::string_view owner, absl::Time now, absl::Time until) {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> held;
  for (auto& [id, row] : records_) {
    Record& r = row.record;
    if (r.generation.done() || r.owner != owner || r.lease_until <= now) {
      continue;
    }
    r.lease_until = until;
    held.push_back(id);
  }
  return held;
}

absl::StatusOr<ListPage> MemoryStore::List(const ListQuery& query) {
  if (query.page_size <= 0) return internal::BadPageSize(query.page_size);
  absl::MutexLock lock(&mu_);
  std::vector<const Row*> matching;
  for (const auto& [id, row] : records_) {
    const v1::Generation& g = row.record.generation;
    if (!internal::Matches(query, g)) continue;
    if (query.after.has_value() &&
        !internal::NewerThan(query.after->create_time, query.after->id,
                             CreateTime(g), g.id())) {
      continue;
    }
    matching.push_back(&row);
  }
  const size_t n =
      std::min(matching.size(), static_cast<size_t>(query.page_size));
  std::partial_sort(
      matching.begin(), matching.begin() + n, matching.end(),
      [](const Row* a, const Row* b) {
        return internal::NewerThan(
            CreateTime(a->record.generation), a->record.generation.id(),
            CreateTime(b->record.generation), b->record.generation.id());
      });
  ListPage page;
  for (size_t i = 0; i < n; ++i) {
    page.generations.push_back(Merged(*matching[i]).generation);
  }
  if (matching.size() > n) {
    const v1::Generation& last = page.generations.back();
    page.next = Cursor{CreateTime(last), last.id()};
  }
  return page;
}

absl::StatusOr<std::vector<std::string>> MemoryStore::PurgeTerminalBefore(
    absl::Time cutoff) {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> purged;
  for (auto it = records_.begin(); it != records_.end();) {
    const v1::Generation& g = it->second.record.generation;
    auto next = std::next(it);
    if (g.done() && UpdateTime(g) < cutoff) {
      purged.push_back(it->first);
      EraseLocked(it);
    }
    it = next;
  }
  return purged;
}

absl::Status MemoryStore::SetWebhookStatus(std::string_view id,
                                           const v1::WebhookStatus& status) {
  absl::MutexLock lock(&mu_);
  auto it = records_.find(id);
  if (it == records_.end()) {
    return absl::NotFoundError(
        absl::StrCat("generation ", std::string(id), " is gone"));
  }
  it->second.webhook = status;
  return absl::OkStatus();
}

// ---- API keys ----

absl::Status MemoryStore::InsertKey(const ApiKey& key) {
  if (key.key_id.empty() || key.key_hash.empty()) {
    return absl::InvalidArgumentError("InsertKey: key_id and key_hash needed");
  }
  absl::MutexLock lock(&mu_);
  if (keys_.count(key.key_id) > 0) {
    return absl::AlreadyExistsError(
        absl::StrCat("key ", key.key_id, " already exists"));
  }
  for (const auto& [id, k] : keys_) {
    if (k.key_hash == key.key_hash) {
      return absl::AlreadyExistsError(
          absl::StrCat("a key with the same hash exists (", id, ")"));
    }
  }
  keys_.emplace(key.key_id, key);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<ApiKey>> MemoryStore::FindKeyByHash(
    std::string_view key_hash) {
  absl::MutexLock lock(&mu_);
  for (const auto& [id, k] : keys_) {
    if (k.key_hash == key_hash) return std::optional<ApiKey>(k);
  }
  return std::optional<ApiKey>();
}

absl::StatusOr<std::vector<ApiKey>> MemoryStore::ListKeys() {
  absl::MutexLock lock(&mu_);
  std::vector<ApiKey> keys;
  for (const auto& [id, k] : keys_) keys.push_back(k);
  std::stable_sort(
      keys.begin(), keys.end(),
      [](const ApiKey& a, const ApiKey& b) { return a.created < b.created; });
  return keys;
}

absl::Status MemoryStore::RevokeKey(std::string_view key_id, absl::Time when) {
  absl::MutexLock lock(&mu_);
  auto it = keys_.find(key_id);
  if (it == keys_.end()) {
    return absl::NotFoundError(absl::StrCat("no key ", std::string(key_id)));
  }
  if (!it->second.revoked.has_value()) it->second.revoked = when;
  return absl::OkStatus();
}

// ---- Webhook outbox ----

absl::StatusOr<std::vector<Delivery>> MemoryStore::ClaimDeliveries(
    std::string_view owner, absl::Time now, absl::Time until, int limit) {
  absl::MutexLock lock(&mu_);
  std::vector<Delivery> claimed;
  for (auto& [seq, d] : outbox_) {
    if (limit >= 0 && claimed.size() >= static_cast<size_t>(limit)) break;
    if (d.next_attempt > now) continue;
    if (!d.owner.empty() && d.lease_until > now) continue;
    d.owner = std::string(owner);
    d.lease_until = until;
    claimed.push_back(d);
  }
  return claimed;
}

absl::Status MemoryStore::FinishDelivery(int64_t seq) {
  absl::MutexLock lock(&mu_);
  outbox_.erase(seq);
  return absl::OkStatus();
}

absl::Status MemoryStore::RetryDelivery(int64_t seq, int attempts,
                                        absl::Time next_attempt) {
  absl::MutexLock lock(&mu_);
  auto it = outbox_.find(seq);
  if (it == outbox_.end()) return absl::OkStatus();
  it->second.attempts = attempts;
  it->second.next_attempt = next_attempt;
  it->second.owner.clear();
  it->second.lease_until = absl::InfinitePast();
  return absl::OkStatus();
}

absl::Status MemoryStore::DropDeliveries(std::string_view generation_id) {
  absl::MutexLock lock(&mu_);
  auto it = records_.find(generation_id);
  if (it != records_.end()) it->second.webhooks_gone = true;
  for (auto d = outbox_.begin(); d != outbox_.end();) {
    d = d->second.generation_id == generation_id ? outbox_.erase(d)
                                                 : std::next(d);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::pair<int64_t, absl::Time>> MemoryStore::OutboxStats() {
  absl::MutexLock lock(&mu_);
  absl::Time oldest = absl::InfinitePast();
  for (const auto& [seq, d] : outbox_) {
    if (oldest == absl::InfinitePast() || d.created < oldest) {
      oldest = d.created;
    }
  }
  return std::make_pair(static_cast<int64_t>(outbox_.size()), oldest);
}

// ---- Estimator samples ----

absl::Status MemoryStore::AddSample(const DurationSample& sample) {
  absl::MutexLock lock(&mu_);
  std::deque<DurationSample>& list =
      samples_[{sample.model, sample.duration_seconds}];
  auto pos = std::find_if(
      list.begin(), list.end(),
      [&](const DurationSample& s) { return s.completed <= sample.completed; });
  list.insert(pos, sample);
  while (list.size() > static_cast<size_t>(kSamplesKept)) list.pop_back();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<DurationSample>> MemoryStore::RecentSamples(
    std::string_view model, int duration_seconds, int limit) {
  absl::MutexLock lock(&mu_);
  std::vector<DurationSample> out;
  auto it = samples_.find(std::make_pair(std::string(model), duration_seconds));
  if (it == samples_.end()) return out;
  for (const DurationSample& s : it->second) {
    if (static_cast<int>(out.size()) >= limit) break;
    out.push_back(s);
  }
  return out;
}

size_t MemoryStore::size() const {
  absl::MutexLock lock(&mu_);
  return records_.size();
}

}  // namespace videogen::store
