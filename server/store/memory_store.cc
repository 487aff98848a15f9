#include "server/store/memory_store.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace videogen::store {
namespace {

absl::Time CreateTime(const v1::Generation& g) {
  return absl::FromUnixSeconds(g.create_time().seconds()) +
         absl::Nanoseconds(g.create_time().nanos());
}

absl::Time UpdateTime(const v1::Generation& g) {
  return absl::FromUnixSeconds(g.update_time().seconds()) +
         absl::Nanoseconds(g.update_time().nanos());
}

// Newest-first order: create_time desc, then id desc.
bool Before(absl::Time t1, const std::string& id1, absl::Time t2,
            const std::string& id2) {
  return t1 > t2 || (t1 == t2 && id1 > id2);
}

bool Matches(const ListQuery& q, const v1::Generation& g) {
  if (!q.states.empty() && std::find(q.states.begin(), q.states.end(),
                                     g.state()) == q.states.end()) {
    return false;
  }
  for (const auto& [key, value] : q.labels) {
    auto it = g.labels().find(key);
    if (it == g.labels().end() || it->second != value) return false;
  }
  return true;
}

}  // namespace

absl::Status MemoryStore::Put(const Record& record) {
  const std::string& id = record.generation.id();
  if (id.empty()) return absl::InvalidArgumentError("record without an id");
  const std::string& rid = record.generation.request().request_id();
  absl::MutexLock lock(&mu_);
  if (!rid.empty()) {
    auto it = by_request_.find(rid);
    if (it != by_request_.end() && it->second != id) {
      return absl::AlreadyExistsError(
          absl::StrCat("request_id \"", rid, "\" belongs to generation \"",
                       it->second, "\""));
    }
  }
  auto old = records_.find(id);
  if (old != records_.end()) {
    const std::string& old_rid = old->second.generation.request().request_id();
    if (!old_rid.empty() && old_rid != rid) by_request_.erase(old_rid);
  }
  if (!rid.empty()) by_request_[rid] = id;
  records_[id] = record;
  return absl::OkStatus();
}

absl::Status MemoryStore::Delete(std::string_view id) {
  absl::MutexLock lock(&mu_);
  auto it = records_.find(id);
  if (it == records_.end()) return absl::OkStatus();
  const std::string& rid = it->second.generation.request().request_id();
  if (!rid.empty()) by_request_.erase(rid);
  records_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<Record>> MemoryStore::Get(std::string_view id) {
  absl::MutexLock lock(&mu_);
  auto it = records_.find(id);
  if (it == records_.end()) return std::optional<Record>();
  return std::optional<Record>(it->second);
}

absl::StatusOr<std::optional<Record>> MemoryStore::GetByRequestId(
    std::string_view request_id) {
  absl::MutexLock lock(&mu_);
  auto it = by_request_.find(request_id);
  if (it == by_request_.end()) return std::optional<Record>();
  return std::optional<Record>(records_.at(it->second));
}

absl::StatusOr<std::vector<Record>> MemoryStore::LoadActive() {
  absl::MutexLock lock(&mu_);
  std::vector<Record> active;
  for (const auto& [id, record] : records_) {
    if (!record.generation.done()) active.push_back(record);
  }
  return active;
}

absl::StatusOr<ListPage> MemoryStore::List(const ListQuery& query) {
  if (query.page_size <= 0) {
    return absl::InvalidArgumentError("page_size must be positive");
  }
  std::vector<const Record*> matching;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, record] : records_) {
    const v1::Generation& g = record.generation;
    if (!Matches(query, g)) continue;
    if (query.after.has_value() &&
        !Before(query.after->create_time, query.after->id, CreateTime(g),
                g.id())) {
      continue;
    }
    matching.push_back(&record);
  }
  std::sort(matching.begin(), matching.end(),
            [](const Record* a, const Record* b) {
              return Before(CreateTime(a->generation), a->generation.id(),
                            CreateTime(b->generation), b->generation.id());
            });
  ListPage page;
  const size_t n =
      std::min(matching.size(), static_cast<size_t>(query.page_size));
  for (size_t i = 0; i < n; ++i) {
    page.generations.push_back(matching[i]->generation);
  }
  if (matching.size() > n) {
    const v1::Generation& last = page.generations.back();
    page.next = Cursor{CreateTime(last), last.id()};
  }
  return page;
}

absl::StatusOr<int64_t> MemoryStore::PurgeTerminalBefore(absl::Time cutoff) {
  absl::MutexLock lock(&mu_);
  int64_t purged = 0;
  for (auto it = records_.begin(); it != records_.end();) {
    const v1::Generation& g = it->second.generation;
    if (g.done() && UpdateTime(g) < cutoff) {
      const std::string& rid = g.request().request_id();
      if (!rid.empty()) by_request_.erase(rid);
      it = records_.erase(it);
      ++purged;
    } else {
      ++it;
    }
  }
  return purged;
}

size_t MemoryStore::size() const {
  absl::MutexLock lock(&mu_);
  return records_.size();
}

}  // namespace videogen::store
