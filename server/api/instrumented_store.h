#pragma once

#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/time/clock.h"
#include "server/api/metrics.h"
#include "server/store/store.h"

namespace videogen::api {
namespace internal {

// Runs `f` and records how long it took as a store write of kind `op`.
template <typename F>
auto TimedStoreWrite(const char* op, F f) {
  const absl::Time start = absl::Now();
  auto result = f();
  Metrics::Global().Observe("videogen_store_write_duration_seconds",
                            {{"op", op}},
                            absl::ToDoubleSeconds(absl::Now() - start));
  return result;
}

}  // namespace internal

// Times every durable write of the wrapped store
// (videogen_store_write_duration_seconds). Thread-safe as the wrapped store.
class InstrumentedStore final : public store::Store {
 public:
  explicit InstrumentedStore(std::unique_ptr<store::Store> inner)
      : inner_(std::move(inner)) {}

  absl::Status Put(const store::Record& record) override {
    return internal::TimedStoreWrite("put",
                                     [&] { return inner_->Put(record); });
  }
  absl::Status Delete(std::string_view id) override {
    return internal::TimedStoreWrite("delete",
                                     [&] { return inner_->Delete(id); });
  }
  absl::StatusOr<std::optional<store::Record>> Get(
      std::string_view id) override {
    return inner_->Get(id);
  }
  absl::StatusOr<std::optional<store::Record>> GetByRequestId(
      std::string_view request_id) override {
    return inner_->GetByRequestId(request_id);
  }
  absl::StatusOr<std::vector<store::Record>> LoadActive() override {
    return inner_->LoadActive();
  }
  absl::StatusOr<store::ListPage> List(const store::ListQuery& q) override {
    return inner_->List(q);
  }
  absl::StatusOr<int64_t> PurgeTerminalBefore(absl::Time cutoff) override {
    return internal::TimedStoreWrite(
        "purge", [&] { return inner_->PurgeTerminalBefore(cutoff); });
  }

 private:
  std::unique_ptr<store::Store> inner_;
};

}  // namespace videogen::api
