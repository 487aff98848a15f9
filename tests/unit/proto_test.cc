// Round-trips every message of the videogen.v1 API and pins the names and
// defaults that other languages' clients rely on.
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <string>

#include "videogen/v1/video_generation.grpc.pb.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::v1 {
namespace {

template <typename T>
T RoundTrip(const T& in) {
  std::string wire;
  EXPECT_TRUE(in.SerializeToString(&wire));
  T out;
  EXPECT_TRUE(out.ParseFromString(wire));
  return out;
}

GenerateRequest FullRequest() {
  GenerateRequest r;
  r.set_request_id("7f1c2a9e-5b8d-4c3e-9a11-0d2b6f4e8c70");
  r.set_model("klingai/v2-master-text-to-video");
  r.set_prompt("a red fox running through snow");
  r.set_negative_prompt("blur");
  r.set_aspect_ratio("9:16");
  r.set_duration_seconds(10);
  r.set_cfg_scale(0.25f);
  r.set_image_url("https://example.invalid/fox.png");
  (*r.mutable_labels())["team"] = "growth";
  return r;
}

TEST(ProtoTest, GenerateRequestRoundTrips) {
  GenerateRequest in = FullRequest();
  GenerateRequest out = RoundTrip(in);
  EXPECT_EQ(out.request_id(), in.request_id());
  EXPECT_EQ(out.prompt(), in.prompt());
  EXPECT_EQ(out.negative_prompt(), "blur");
  EXPECT_EQ(out.aspect_ratio(), "9:16");
  EXPECT_EQ(out.duration_seconds(), 10);
  ASSERT_TRUE(out.has_cfg_scale());
  EXPECT_FLOAT_EQ(out.cfg_scale(), 0.25f);
  EXPECT_EQ(out.labels().at("team"), "growth");
}

TEST(ProtoTest, CfgScaleZeroIsDistinctFromUnset) {
  GenerateRequest unset;
  EXPECT_FALSE(RoundTrip(unset).has_cfg_scale());
  GenerateRequest zero;
  zero.set_cfg_scale(0.0f);
  EXPECT_TRUE(RoundTrip(zero).has_cfg_scale());
}

TEST(ProtoTest, GenerationRoundTrips) {
  Generation g;
  g.set_id("gen_abc");
  g.set_state(Generation::STATE_COMPLETED);
  g.set_revision(7);
  g.set_upstream_id("10c09c56:kling-video/v2/master/text-to-video");
  g.set_upstream_status("completed");
  *g.mutable_request() = FullRequest();
  g.mutable_video()->set_url("http://127.0.0.1/v.mp4");
  g.mutable_video()->set_content_type("video/mp4");
  g.mutable_video()->set_file_name("v.mp4");
  g.mutable_video()->set_file_size_bytes(12345);
  g.mutable_video()->set_duration_seconds(5.1);
  g.mutable_error()->set_code(4);
  g.mutable_error()->set_reason("DEADLINE_EXCEEDED");
  g.mutable_error()->set_message("m");
  g.mutable_usage()->set_tokens_used(120000);
  g.mutable_usage()->set_credits_used(3);
  g.mutable_create_time()->set_seconds(1700000000);
  g.mutable_update_time()->set_seconds(1700000100);
  g.set_done(true);
  (*g.mutable_labels())["team"] = "growth";

  Generation out = RoundTrip(g);
  EXPECT_EQ(out.SerializeAsString(), g.SerializeAsString());
  EXPECT_EQ(out.upstream_id(), g.upstream_id());
  EXPECT_EQ(out.video().file_size_bytes(), 12345);
  EXPECT_EQ(out.usage().tokens_used(), 120000);
  EXPECT_EQ(out.error().reason(), "DEADLINE_EXCEEDED");
  EXPECT_EQ(out.update_time().seconds(), 1700000100);
}

TEST(ProtoTest, EventsAndRequestsRoundTrip) {
  GenerationEvent e;
  e.set_type(GenerationEvent::TYPE_HEARTBEAT);
  e.mutable_generation()->set_id("x");
  e.mutable_generation()->set_revision(3);
  e.mutable_observe_time()->set_nanos(5);
  EXPECT_EQ(RoundTrip(e).generation().revision(), 3);
  EXPECT_EQ(RoundTrip(e).type(), GenerationEvent::TYPE_HEARTBEAT);

  WatchGenerationRequest w;
  w.set_id("x");
  w.set_after_revision(4);
  EXPECT_EQ(RoundTrip(w).after_revision(), 4);

  WatchGenerationsRequest ws;
  ws.add_states(Generation::STATE_QUEUED);
  (*ws.mutable_labels())["a"] = "b";
  EXPECT_EQ(RoundTrip(ws).states(0), Generation::STATE_QUEUED);

  GetGenerationRequest get;
  get.set_id("y");
  EXPECT_EQ(RoundTrip(get).id(), "y");

  ListGenerationsRequest list;
  list.set_page_size(20);
  list.set_page_token("tok");
  list.add_states(Generation::STATE_FAILED);
  (*list.mutable_labels())["k"] = "v";
  ListGenerationsRequest list_out = RoundTrip(list);
  EXPECT_EQ(list_out.page_size(), 20);
  EXPECT_EQ(list_out.page_token(), "tok");

  ListGenerationsResponse resp;
  resp.add_generations()->set_id("z");
  resp.set_next_page_token("next");
  EXPECT_EQ(RoundTrip(resp).generations(0).id(), "z");
  EXPECT_EQ(RoundTrip(resp).next_page_token(), "next");

  CancelGenerationRequest cancel;
  cancel.set_id("c");
  EXPECT_EQ(RoundTrip(cancel).id(), "c");
}

TEST(ProtoTest, DefaultsAreZeroValues) {
  Generation g;
  EXPECT_EQ(g.state(), Generation::STATE_UNSPECIFIED);
  EXPECT_EQ(g.revision(), 0);
  EXPECT_FALSE(g.done());
  EXPECT_FALSE(g.has_video());
  EXPECT_FALSE(g.has_error());
  GenerationEvent e;
  EXPECT_EQ(e.type(), GenerationEvent::TYPE_UNSPECIFIED);
}

// Other languages see these names through the JSON mapping and reflection;
// renaming any of them is a breaking change.
TEST(ProtoTest, ContractNamesAreStable) {
  EXPECT_EQ(Generation::State_Name(Generation::STATE_UNSPECIFIED),
            "STATE_UNSPECIFIED");
  EXPECT_EQ(Generation::State_Name(Generation::STATE_QUEUED), "STATE_QUEUED");
  EXPECT_EQ(Generation::State_Name(Generation::STATE_GENERATING),
            "STATE_GENERATING");
  EXPECT_EQ(Generation::State_Name(Generation::STATE_COMPLETED),
            "STATE_COMPLETED");
  EXPECT_EQ(Generation::State_Name(Generation::STATE_FAILED), "STATE_FAILED");
  EXPECT_EQ(Generation::State_Name(Generation::STATE_CANCELLED),
            "STATE_CANCELLED");
  EXPECT_EQ(GenerationEvent::Type_Name(GenerationEvent::TYPE_SNAPSHOT),
            "TYPE_SNAPSHOT");
  EXPECT_EQ(GenerationEvent::Type_Name(GenerationEvent::TYPE_UPDATE),
            "TYPE_UPDATE");
  EXPECT_EQ(GenerationEvent::Type_Name(GenerationEvent::TYPE_HEARTBEAT),
            "TYPE_HEARTBEAT");
  EXPECT_EQ(Generation::descriptor()->full_name(), "videogen.v1.Generation");
  const auto* service = VideoGeneration::service_full_name();
  EXPECT_STREQ(service, "videogen.v1.VideoGeneration");
}

TEST(ProtoTest, ServiceHasEveryRpcOfTheContract) {
  const auto* file = Generation::descriptor()->file();
  const auto* svc = file->FindServiceByName("VideoGeneration");
  ASSERT_NE(svc, nullptr);
  struct Rpc {
    const char* name;
    bool server_streaming;
  };
  for (const Rpc& rpc :
       {Rpc{"Generate", true}, Rpc{"CreateGeneration", false},
        Rpc{"WatchGeneration", true}, Rpc{"WatchGenerations", true},
        Rpc{"GetGeneration", false}, Rpc{"ListGenerations", false},
        Rpc{"CancelGeneration", false}}) {
    const auto* m = svc->FindMethodByName(rpc.name);
    ASSERT_NE(m, nullptr) << rpc.name;
    EXPECT_EQ(m->server_streaming(), rpc.server_streaming) << rpc.name;
    EXPECT_FALSE(m->client_streaming()) << rpc.name;
  }
  EXPECT_EQ(svc->method_count(), 7);
}

TEST(ProtoTest, JsonMappingUsesLowerCamelCase) {
  Generation g;
  g.set_id("a");
  g.set_state(Generation::STATE_QUEUED);
  g.set_upstream_status("queued");
  std::string json;
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(g, &json).ok());
  EXPECT_NE(json.find("\"upstreamStatus\":\"queued\""), std::string::npos)
      << json;
  EXPECT_NE(json.find("\"state\":\"STATE_QUEUED\""), std::string::npos) << json;
}

}  // namespace
}  // namespace videogen::v1
