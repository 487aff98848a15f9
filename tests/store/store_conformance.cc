// The cases of the store conformance suite; see store_conformance.h.
#include "tests/store/store_conformance.h"

namespace videogen::store::conformance {

void StoreConformanceTest::SetUp() {
  store_ = GetParam()();
  if (store_ == nullptr) GTEST_SKIP() << "the store factory made no store";
}

void StoreConformanceTest::TearDown() {
  if (store_ != nullptr) store_->feed()->SetListener(nullptr);
  store_.reset();
}

}  // namespace videogen::store::conformance
