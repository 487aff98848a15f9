#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/store/store.h"

namespace videogen::store {

// A Store kept in process memory: nothing survives a restart. For tests and
// `--store=memory`. Thread-safe: one mutex guards everything; every call is
// short.
class MemoryStore final : public Store {
 public:
  absl::Status Put(const Record& record) override;
  absl::Status Delete(std::string_view id) override;
  absl::StatusOr<std::optional<Record>> Get(std::string_view id) override;
  absl::StatusOr<std::optional<Record>> GetByRequestId(
      std::string_view request_id) override;
  absl::StatusOr<std::vector<Record>> LoadActive() override;
  absl::StatusOr<ListPage> List(const ListQuery& query) override;
  absl::StatusOr<int64_t> PurgeTerminalBefore(absl::Time cutoff) override;

  size_t size() const;

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, Record, std::less<>> records_ ABSL_GUARDED_BY(mu_);
  // request_id -> id, for non-empty request_ids.
  std::map<std::string, std::string, std::less<>> by_request_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace videogen::store
