#include "tests/e2e_media/upstream_front.h"

#include <stdexcept>
#include <string_view>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"

namespace videogen::e2e_media {
namespace {

FileMode ModeOfPrompt(const std::string& prompt) {
  if (absl::StrContains(prompt, "[front:404]")) return FileMode::kNotFound;
  if (absl::StrContains(prompt, "[front:truncated]")) {
    return FileMode::kTruncated;
  }
  if (absl::StrContains(prompt, "[front:wrong_size]")) {
    return FileMode::kWrongSize;
  }
  if (absl::StrContains(prompt, "[front:slow]")) return FileMode::kSlow;
  return FileMode::kPass;
}

// "http://HOST/files/UUID.mp4" -> "UUID".
std::string UuidOfUrl(const std::string& url) {
  size_t at = url.rfind("/files/");
  if (at == std::string::npos || !absl::EndsWith(url, ".mp4")) return "";
  at += 7;
  return url.substr(at, url.size() - 4 - at);
}

bool HopByHop(const std::string& name) {
  static const char* kSkip[] = {"host",
                                "content-length",
                                "connection",
                                "keep-alive",
                                "transfer-encoding",
                                "content-type",
                                "accept-encoding",
                                "remote_addr",
                                "remote_port",
                                "local_addr",
                                "local_port"};
  for (const char* s : kSkip) {
    if (absl::EqualsIgnoreCase(name, s)) return true;
  }
  return false;
}

}  // namespace

UpstreamFront::UpstreamFront(std::string sim_url)
    : sim_url_(std::move(sim_url)) {
  server_.Get(R"(/files/([0-9a-f\-]+)\.mp4)",
              [this](const auto& req, auto& res) { ServeFile(req, res); });
  server_.Get(".*", [this](const auto& req, auto& res) { Forward(req, res); });
  server_.Post(".*", [this](const auto& req, auto& res) { Forward(req, res); });
  port_ = server_.bind_to_any_port("127.0.0.1");
  if (port_ <= 0) throw std::runtime_error("front: cannot bind");
  thread_ = std::thread([this] { server_.listen_after_bind(); });
  // stop() before the loop runs would be lost, and the join would hang.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!server_.is_running() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
  }
}

UpstreamFront::~UpstreamFront() {
  server_.stop();
  if (thread_.joinable()) thread_.join();
}

std::string UpstreamFront::url() const {
  return absl::StrCat("http://127.0.0.1:", port_);
}

void UpstreamFront::Forward(const httplib::Request& req,
                            httplib::Response& res) {
  httplib::Client client(sim_url_);
  client.set_read_timeout(30, 0);
  httplib::Headers headers;
  for (const auto& [k, v] : req.headers) {
    if (!HopByHop(k)) headers.emplace(k, v);
  }
  httplib::Result r = req.method == "POST"
                          ? client.Post(req.target, headers, req.body,
                                        req.get_header_value("Content-Type"))
                          : client.Get(req.target, headers);
  if (!r) {
    res.status = 502;
    res.set_content("front: the simulator did not answer", "text/plain");
    return;
  }
  res.status = r->status;
  for (const auto& [k, v] : r->headers) {
    if (!HopByHop(k)) res.set_header(k, v);
  }
  Learn(req.method == "POST" ? req.body : "", r->body);
  res.set_content(Rewrite(r->body), r->get_header_value("Content-Type"));
}

void UpstreamFront::Learn(const std::string& request_body,
                          const std::string& answer) {
  nlohmann::json a = nlohmann::json::parse(answer, nullptr, false);
  if (!a.is_object() || !a.contains("id") || !a["id"].is_string()) return;
  const std::string id = a["id"];
  absl::MutexLock lock(&mu_);
  if (!request_body.empty()) {
    nlohmann::json q = nlohmann::json::parse(request_body, nullptr, false);
    if (q.is_object() && q.contains("prompt") && q["prompt"].is_string()) {
      mode_by_id_[id] = ModeOfPrompt(q["prompt"]);
    }
  }
  if (a.contains("video") && a["video"].is_object() &&
      a["video"].contains("url") && a["video"]["url"].is_string()) {
    std::string uuid = UuidOfUrl(a["video"]["url"]);
    auto it = mode_by_id_.find(id);
    if (!uuid.empty() && it != mode_by_id_.end()) {
      mode_by_uuid_[uuid] = it->second;
    }
  }
}

std::string UpstreamFront::Rewrite(std::string body) const {
  return absl::StrReplaceAll(body, {{sim_url_ + "/files/", url() + "/files/"}});
}

bool UpstreamFront::SimFile(const std::string& uuid, std::string* bytes) {
  {
    absl::MutexLock lock(&mu_);
    auto it = files_.find(uuid);
    if (it != files_.end()) {
      *bytes = *it->second;
      return true;
    }
  }
  httplib::Client client(sim_url_);
  httplib::Result r = client.Get(absl::StrCat("/files/", uuid, ".mp4"));
  if (!r || r->status != 200) return false;
  absl::MutexLock lock(&mu_);
  files_[uuid] = std::make_shared<const std::string>(r->body);
  *bytes = r->body;
  return true;
}

void UpstreamFront::ServeFile(const httplib::Request& req,
                              httplib::Response& res) {
  ++file_requests_;
  if (req.has_header("Range")) ++range_requests_;
  const std::string uuid = req.matches[1].str();
  FileMode mode = FileMode::kPass;
  {
    absl::MutexLock lock(&mu_);
    auto it = mode_by_uuid_.find(uuid);
    if (it != mode_by_uuid_.end()) mode = it->second;
  }
  if (healed_.load()) mode = FileMode::kPass;
  if (mode == FileMode::kNotFound) {
    res.status = 404;
    res.set_content("<html>Not Found</html>", "text/html");
    return;
  }
  auto data = std::make_shared<std::string>();
  if (!SimFile(uuid, data.get())) {
    res.status = 502;
    res.set_content("front: no file from the simulator", "text/plain");
    return;
  }
  switch (mode) {
    case FileMode::kTruncated: {
      // httplib applies Range to the provider: a resume asks for offsets at
      // or past the cut and gets nothing before the connection drops.
      const size_t cut = data->size() / 2;
      res.set_content_provider(
          data->size(), "video/mp4",
          [data, cut](size_t offset, size_t length, httplib::DataSink& sink) {
            if (offset < cut) {
              sink.write(data->data() + offset, std::min(length, cut - offset));
            }
            return false;  // drop the connection
          });
      return;
    }
    case FileMode::kWrongSize:
      data->append(1000, '\0');
      res.set_content(*data, "video/mp4");
      return;
    case FileMode::kSlow: {
      // About four seconds for the whole file, whatever its size.
      const size_t chunk = std::max<size_t>(1, data->size() / 40);
      res.set_content_provider(
          data->size(), "video/mp4",
          [data, chunk](size_t offset, size_t length, httplib::DataSink& sink) {
            absl::SleepFor(absl::Milliseconds(100));
            return sink.write(data->data() + offset, std::min(length, chunk));
          });
      return;
    }
    default:
      res.set_content(*data, "video/mp4");
      return;
  }
}

}  // namespace videogen::e2e_media
