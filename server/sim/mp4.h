#pragma once

#include <string>

namespace videogen::sim {

// What MakeMp4 draws: a moving colour gradient, so a player shows motion.
struct Mp4Spec {
  int width = 64;   // multiple of 16
  int height = 64;  // multiple of 16
  int frames = 10;
  int fps = 10;
};

// A playable MP4 (ftyp, moov, mdat) holding one H.264 Constrained Baseline
// track. Every frame is an IDR slice of I_PCM macroblocks: raw samples, no
// transform or entropy coding, so a few hundred lines make a stream that
// any decoder plays. Pure function; thread-safe.
std::string MakeMp4(const Mp4Spec& spec);

// MakeMp4(Mp4Spec{}), built once on first use. Thread-safe.
const std::string& SampleMp4();

}  // namespace videogen::sim
