// The only place that writes the Prometheus text format.
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "server/api/metrics.h"

namespace videogen::api {
namespace {

std::string FormatValue(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    return absl::StrCat(static_cast<int64_t>(v));
  }
  return absl::StrCat(v);
}

std::string Escape(const std::string& s) {
  return absl::StrReplaceAll(s,
                             {{"\\", "\\\\"}, {"\"", "\\\""}, {"\n", "\\n"}});
}

std::string LabelText(const Labels& labels, const std::string& le = "") {
  std::string out;
  for (const auto& [k, v] : labels) {
    absl::StrAppend(&out, out.empty() ? "" : ",", k, "=\"", Escape(v), "\"");
  }
  if (!le.empty())
    absl::StrAppend(&out, out.empty() ? "" : ",", "le=\"", le, "\"");
  return out.empty() ? "" : absl::StrCat("{", out, "}");
}

const char* TypeName(Metrics::Type t) {
  switch (t) {
    case Metrics::Type::kCounter:
      return "counter";
    case Metrics::Type::kGauge:
      return "gauge";
    case Metrics::Type::kHistogram:
      return "histogram";
  }
  return "untyped";
}

void RenderHistogram(const std::string& name, const Metrics::Family& f,
                     const Labels& labels, const Metrics::Series& s,
                     std::string* out) {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < f.buckets.size(); ++i) {
    cumulative += i < s.counts.size() ? s.counts[i] : 0;
    absl::StrAppend(out, name, "_bucket",
                    LabelText(labels, FormatValue(f.buckets[i])), " ",
                    cumulative, "\n");
  }
  absl::StrAppend(out, name, "_bucket", LabelText(labels, "+Inf"), " ", s.count,
                  "\n");
  absl::StrAppend(out, name, "_sum", LabelText(labels), " ", FormatValue(s.sum),
                  "\n");
  absl::StrAppend(out, name, "_count", LabelText(labels), " ", s.count, "\n");
}

}  // namespace

std::string RenderPrometheus(
    const std::map<std::string, Metrics::Family>& families) {
  std::string out;
  for (const auto& [name, f] : families) {
    absl::StrAppend(&out, "# HELP ", name, " ", f.help, "\n");
    absl::StrAppend(&out, "# TYPE ", name, " ", TypeName(f.type), "\n");
    for (const auto& [labels, s] : f.series) {
      if (f.type == Metrics::Type::kHistogram) {
        RenderHistogram(name, f, labels, s, &out);
      } else {
        absl::StrAppend(&out, name, LabelText(labels), " ",
                        FormatValue(s.value), "\n");
      }
    }
  }
  return out;
}

}  // namespace videogen::api
