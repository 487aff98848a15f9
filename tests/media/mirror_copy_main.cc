// Copies one URL into a local media store and prints the outcome:
//   mirror_copy URL DIR GENERATION_ID
// prints "OK <sha256> <size>" or "ERR <message>". The mirror test kills it
// with SIGKILL mid-copy to check what a crash leaves behind.

#include <cstdio>
#include <string>

#include "absl/synchronization/notification.h"
#include "server/media/media_store.h"
#include "server/media/mirror_pool.h"

int main(int argc, char** argv) {
  using namespace videogen::media;
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s URL DIR GENERATION_ID\n", argv[0]);
    return 2;
  }
  auto store = NewLocalMediaStore(argv[2]);
  if (!store.ok()) {
    std::printf("ERR %s\n", std::string(store.status().message()).c_str());
    return 1;
  }
  std::unique_ptr<Mirror> mirror = NewMirror(store->get(), MirrorOptions{});
  absl::Notification done;
  absl::StatusOr<MirrorResult> result;
  MirrorJob job;
  job.generation_id = argv[3];
  job.url = argv[1];
  mirror->Copy(job, [&](absl::StatusOr<MirrorResult> r) {
    result = std::move(r);
    done.Notify();
  });
  done.WaitForNotification();
  if (!result.ok()) {
    std::printf("ERR %s\n", std::string(result.status().message()).c_str());
    return 1;
  }
  std::printf("OK %s %lld\n", result->sha256.c_str(),
              static_cast<long long>(result->size));
  return 0;
}
