#pragma once

#include "server/util/log.h"

namespace videogen::api {

// The edges log through util's asynchronous logger.
using util::FlushLogs;
using util::Log;
using util::LogFormat;
using util::SetLogFormat;

}  // namespace videogen::api
