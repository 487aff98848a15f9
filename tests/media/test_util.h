#pragma once

// Helpers for the media tests: a loopback HTTP server with faults, a child
// process runner, and file utilities.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "httplib.h"

extern char** environ;

namespace videogen::media::testing {

inline std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(n, '\0');
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<char>(rng() & 0xff);
  return out;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
}

// SHA-256 computed by a different implementation than the server's
// (coreutils' sha256sum), so a bug in our hashing cannot agree with itself.
inline std::string IndependentSha256(const std::string& data,
                                     const std::string& scratch_dir) {
  std::string path = scratch_dir + "/independent-sha-input";
  WriteFile(path, data);
  std::string cmd = "sha256sum '" + path + "'";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return "";
  char buf[256] = {0};
  size_t n = fread(buf, 1, sizeof(buf) - 1, p);
  pclose(p);
  std::string out(buf, n);
  std::filesystem::remove(path);
  return out.substr(0, out.find(' '));
}

inline std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// A fresh directory under the test's temp dir, removed at destruction.
class TempDir {
 public:
  TempDir() {
    std::string base = ::testing::TempDir();
    std::string tmpl = base + "/media_test_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    path_ = std::filesystem::canonical(mkdtemp(buf.data())).string();
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A loopback HTTP server (cpp-httplib) serving one video body under paths
// that misbehave in known ways:
//   /video.mp4       the body, Range honoured (httplib), video/mp4
//   /drop-once.mp4   the first request breaks off after `drop_at` bytes
//   /truncated.mp4   announces the whole length, never sends past `drop_at`
//   /no-range.mp4    like drop-once, but ignores Range (always 200)
//   /missing.mp4     404
//   /page.html       200 text/html
//   /redirect.mp4    302 to /video.mp4
//   /gate.mp4        the first request sends `drop_at` bytes, then waits
//                    for Release() (or the server's end) and breaks off
// Records every request's Range header. Thread-safe.
class VideoServer {
 public:
  explicit VideoServer(std::string body, size_t drop_at)
      : body_(std::move(body)), drop_at_(drop_at) {
    Route(
        "/video.mp4", [](int) { return false; }, true, false);
    Route(
        "/drop-once.mp4", [](int hit) { return hit == 1; }, true, false);
    Route(
        "/truncated.mp4", [](int) { return true; }, true, false);
    Route(
        "/no-range.mp4", [](int hit) { return hit == 1; }, false, false);
    Route(
        "/gate.mp4", [](int hit) { return hit == 1; }, true, true);
    server_.Get("/missing.mp4",
                [this](const httplib::Request& req, httplib::Response& res) {
                  Record(req);
                  res.status = 404;
                  res.set_content("{\"message\":\"gone\"}", "application/json");
                });
    server_.Get("/page.html",
                [this](const httplib::Request& req, httplib::Response& res) {
                  Record(req);
                  res.set_content("<html>sign in</html>", "text/html");
                });
    server_.Get("/redirect.mp4",
                [this](const httplib::Request& req, httplib::Response& res) {
                  Record(req);
                  res.set_redirect("/video.mp4");
                });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // httplib 0.11's stop() is a no-op until the loop runs: wait for it.
    while (!server_.is_running()) absl::SleepFor(absl::Milliseconds(1));
  }

  ~VideoServer() {
    stopping_ = true;
    server_.stop();
    thread_.join();
  }

  std::string Url(const std::string& path) const {
    return absl::StrCat("http://127.0.0.1:", port_, path);
  }
  const std::string& body() const { return body_; }
  void Release() {
    if (!released_.HasBeenNotified()) released_.Notify();
  }
  // "path range" per request, in order ("-" when there was no Range).
  std::vector<std::string> requests() const {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  // Body bytes handed to each request's connection, in request order.
  std::vector<size_t> served() const {
    absl::MutexLock lock(&mu_);
    return served_;
  }

 private:
  // `limited(hit)`: does the hit-th request to `path` break off after
  // `drop_at` bytes of the file? `ranges`: honour Range (httplib does) or
  // always answer 200 with everything. `gate`: before breaking off, wait
  // for Release() or the server's end.
  void Route(const std::string& path, std::function<bool(int hit)> limited,
             bool ranges, bool gate) {
    server_.Get(path, [this, limited, ranges, gate](const httplib::Request& req,
                                                    httplib::Response& res) {
      int hit = Record(req);
      if (!ranges) {
        // httplib applies Range after the handler unless told otherwise;
        // the request object is not const underneath.
        const_cast<httplib::Request&>(req).ranges.clear();
        res.status = 200;
      }
      bool limit = limited(hit);
      size_t index = RequestCount() - 1;
      res.set_content_provider(
          body_.size(), "video/mp4",
          [this, limit, gate, index](size_t offset, size_t length,
                                     httplib::DataSink& sink) {
            size_t end = offset + std::min<size_t>(length, 64 * 1024);
            if (limit) {
              if (offset >= drop_at_) {
                while (gate && !released_.HasBeenNotified() &&
                       !stopping_.load()) {
                  released_.WaitForNotificationWithTimeout(
                      absl::Milliseconds(20));
                }
                return false;  // breaks off the connection
              }
              end = std::min(end, drop_at_);
            }
            {
              absl::MutexLock lock(&mu_);
              served_[index] += end - offset;
            }
            return sink.write(body_.data() + offset, end - offset);
          });
    });
  }

  size_t RequestCount() const {
    absl::MutexLock lock(&mu_);
    return requests_.size();
  }

  int Record(const httplib::Request& req) {
    absl::MutexLock lock(&mu_);
    served_.push_back(0);
    std::string range = req.get_header_value("Range");
    requests_.push_back(req.path + " " + (range.empty() ? "-" : range));
    return ++hits_[req.path];
  }

  const std::string body_;
  const size_t drop_at_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  absl::Notification released_;
  std::atomic<bool> stopping_{false};
  mutable absl::Mutex mu_;
  std::vector<std::string> requests_ ABSL_GUARDED_BY(mu_);
  std::vector<size_t> served_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> hits_ ABSL_GUARDED_BY(mu_);
};

// A child process with its stdout on a pipe. Killed (SIGKILL) and reaped
// at destruction if still running.
class Child {
 public:
  explicit Child(const std::vector<std::string>& argv) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    std::vector<char*> args;
    for (const std::string& a : argv)
      args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    if (posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ) !=
        0) {
      pid_ = -1;
    }
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    out_ = fds[0];
  }
  ~Child() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) close(out_);
  }
  bool started() const { return pid_ > 0; }

  // The next line of the child's stdout; "" at EOF or after `timeout`.
  std::string ReadLine(absl::Duration timeout) {
    absl::Time deadline = absl::Now() + timeout;
    while (true) {
      size_t nl = buffer_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return "";
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left))) <= 0) {
        continue;
      }
      char buf[4096];
      ssize_t n = read(out_, buf, sizeof(buf));
      if (n <= 0) return "";
      buffer_.append(buf, static_cast<size_t>(n));
    }
  }

  // Sends `sig` and reaps the child. Returns the wait status.
  int KillAndWait(int sig) {
    int status = 0;
    if (pid_ > 0) {
      kill(pid_, sig);
      waitpid(pid_, &status, 0);
      pid_ = -1;
    }
    return status;
  }
  int Wait() {
    int status = 0;
    if (pid_ > 0) {
      waitpid(pid_, &status, 0);
      pid_ = -1;
    }
    return status;
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  std::string buffer_;
};

// Polls `done` every 10 ms until it holds or `timeout` passes.
inline bool WaitFor(const std::function<bool()>& done,
                    absl::Duration timeout = absl::Seconds(20)) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return done();
}

}  // namespace videogen::media::testing
