#include "server/api/request_errors.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "google/protobuf/stubs/logging.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "server/api/log.h"
#include "server/api/methods.h"

namespace videogen::api {
namespace {

constexpr char kUnparsable[] =
    "the request could not be parsed: a string field holds invalid UTF-8 "
    "(send text as UTF-8; binary data does not belong in these fields) or "
    "the message is malformed";

// One per RPC, created and run by gRPC.
class BadRequestInterceptor : public grpc::experimental::Interceptor {
 public:
  void Intercept(grpc::experimental::InterceptorBatchMethods* m) override {
    using H = grpc::experimental::InterceptionHookPoints;
    if (m->QueryInterceptionHookPoint(H::PRE_SEND_STATUS)) {
      const grpc::Status status = m->GetSendStatus();
      // The service never answers UNIMPLEMENTED without a message: this is
      // gRPC's answer to a request it could not deserialize.
      if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED &&
          status.error_message().empty()) {
        m->ModifySendStatus(
            grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, kUnparsable));
      }
    }
    m->Proceed();
  }
};

void ProtobufLogToJson(google::protobuf::LogLevel level, const char* filename,
                       int line, const std::string& message) {
  const char* severity = level >= google::protobuf::LOGLEVEL_ERROR     ? "error"
                         : level == google::protobuf::LOGLEVEL_WARNING ? "warn"
                                                                       : "info";
  Log(severity, "protobuf",
      {{"message", message},
       {"source",
        absl::StrCat(filename == nullptr ? "" : filename, ":", line)}});
}

}  // namespace

grpc::experimental::Interceptor*
BadRequestInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  // Only the unary methods this server serves: an unknown method's
  // UNIMPLEMENTED is the right answer, and the streaming ones parse their own
  // requests (ParseRequest).
  const char* method = info->method();
  if (method == nullptr || KindOf(method) != MethodKind::kUnary) {
    return nullptr;
  }
  return new BadRequestInterceptor();
}

absl::Status ParseRequest(const grpc::ByteBuffer& wire,
                          google::protobuf::Message* out) {
  grpc::ProtoBufferReader reader(const_cast<grpc::ByteBuffer*>(&wire));
  if (!out->ParseFromZeroCopyStream(&reader)) {
    return absl::InvalidArgumentError(kUnparsable);
  }
  return absl::OkStatus();
}

void RouteProtobufLogs() {
  google::protobuf::SetLogHandler(&ProtobufLogToJson);
}

}  // namespace videogen::api
