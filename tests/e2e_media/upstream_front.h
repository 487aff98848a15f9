#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "httplib.h"

namespace videogen::e2e_media {

// How the front serves one generation's video file.
enum class FileMode {
  kPass,       // the simulator's bytes, as they are
  kNotFound,   // 404 on every request
  kTruncated,  // 200 with the full Content-Length but half the bytes, then
               // the connection drops; a resume (Range) gets no byte at all
  kWrongSize,  // the simulator's bytes plus 1000 more (the upstream reported
               // the original size)
  kSlow,       // the simulator's bytes, a 40th every 100 ms (about 4 s)
};

// An in-process HTTP server standing between videogen-server and
// videogen-sim: create, poll and usage-log requests are forwarded to the sim
// unchanged, except that the video URLs in its answers are rewritten to
// point here, so the front decides how each file download goes. The mode of
// a generation comes from its prompt: a prompt containing "[front:404]",
// "[front:truncated]", "[front:wrong_size]" or "[front:slow]" picks that
// mode, anything else kPass. Thread-safe; requests run on httplib's threads.
class UpstreamFront {
 public:
  explicit UpstreamFront(std::string sim_url);
  ~UpstreamFront();  // stops serving
  UpstreamFront(const UpstreamFront&) = delete;
  UpstreamFront& operator=(const UpstreamFront&) = delete;

  std::string url() const;  // http://127.0.0.1:PORT

  // File requests answered so far, and of them the ones with a Range header.
  int64_t file_requests() const { return file_requests_.load(); }
  int64_t range_requests() const { return range_requests_.load(); }

  // Every later file request is served as kPass (a "healed" upstream).
  void HealAll() { healed_.store(true); }

 private:
  void Forward(const httplib::Request& req, httplib::Response& res);
  void ServeFile(const httplib::Request& req, httplib::Response& res);
  // Learns generation modes from create and poll answers.
  void Learn(const std::string& request_body, const std::string& answer);
  std::string Rewrite(std::string body) const;
  // The simulator's bytes of `uuid`, fetched once.
  bool SimFile(const std::string& uuid, std::string* bytes);

  const std::string sim_url_;
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  std::atomic<int64_t> file_requests_{0};
  std::atomic<int64_t> range_requests_{0};
  std::atomic<bool> healed_{false};

  mutable absl::Mutex mu_;
  std::map<std::string, FileMode> mode_by_id_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, FileMode> mode_by_uuid_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<const std::string>> files_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace videogen::e2e_media
