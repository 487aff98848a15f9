#include "server/sim/mp4.h"

#include <cstdint>
#include <string>
#include <vector>

namespace videogen::sim {
namespace {

// Writes the bits of an H.264 RBSP, most significant bit first.
class BitWriter {
 public:
  void Bits(int n, uint32_t value) {
    for (int i = n - 1; i >= 0; --i) Bit((value >> i) & 1);
  }
  void Bit(int b) {
    cur_ = static_cast<uint8_t>((cur_ << 1) | (b & 1));
    if (++nbits_ == 8) {
      out_.push_back(static_cast<char>(cur_));
      cur_ = 0;
      nbits_ = 0;
    }
  }
  // Exp-Golomb codes, H.264 §9.1.
  void Ue(uint32_t v) {
    uint32_t x = v + 1;
    int len = 0;
    while ((x >> len) > 1) ++len;
    Bits(len, 0);
    Bits(len + 1, x);
  }
  void Se(int32_t v) { Ue(v > 0 ? 2 * v - 1 : -2 * v); }
  void AlignZero() {
    while (nbits_ != 0) Bit(0);
  }
  void Byte(uint8_t b) { Bits(8, b); }
  // rbsp_trailing_bits: a one, then zeros to the byte boundary.
  std::string Finish() {
    Bit(1);
    AlignZero();
    return out_;
  }

 private:
  std::string out_;
  uint8_t cur_ = 0;
  int nbits_ = 0;
};

// NAL header plus the RBSP with emulation prevention bytes (§7.4.1).
std::string Nal(int ref_idc, int type, const std::string& rbsp) {
  std::string nal(1, static_cast<char>((ref_idc << 5) | type));
  int zeros = 0;
  for (char c : rbsp) {
    uint8_t b = static_cast<uint8_t>(c);
    if (zeros >= 2 && b <= 3) {
      nal.push_back(3);
      zeros = 0;
    }
    nal.push_back(c);
    zeros = b == 0 ? zeros + 1 : 0;
  }
  return nal;
}

constexpr int kProfileBaseline = 66;
constexpr int kConstraintFlags = 0xc0;  // set0+set1: Constrained Baseline
constexpr int kLevel = 30;

std::string Sps(int width, int height) {
  BitWriter w;
  w.Byte(kProfileBaseline);
  w.Byte(kConstraintFlags);
  w.Byte(kLevel);
  w.Ue(0);   // seq_parameter_set_id
  w.Ue(0);   // log2_max_frame_num_minus4
  w.Ue(2);   // pic_order_cnt_type: order follows decoding order
  w.Ue(1);   // max_num_ref_frames
  w.Bit(0);  // gaps_in_frame_num_value_allowed_flag
  w.Ue(width / 16 - 1);
  w.Ue(height / 16 - 1);
  w.Bit(1);  // frame_mbs_only_flag
  w.Bit(1);  // direct_8x8_inference_flag
  w.Bit(0);  // frame_cropping_flag
  w.Bit(0);  // vui_parameters_present_flag
  return Nal(3, 7, w.Finish());
}

std::string Pps() {
  BitWriter w;
  w.Ue(0);       // pic_parameter_set_id
  w.Ue(0);       // seq_parameter_set_id
  w.Bit(0);      // entropy_coding_mode_flag: CAVLC
  w.Bit(0);      // bottom_field_pic_order_in_frame_present_flag
  w.Ue(0);       // num_slice_groups_minus1
  w.Ue(0);       // num_ref_idx_l0_default_active_minus1
  w.Ue(0);       // num_ref_idx_l1_default_active_minus1
  w.Bit(0);      // weighted_pred_flag
  w.Bits(2, 0);  // weighted_bipred_idc
  w.Se(0);       // pic_init_qp_minus26
  w.Se(0);       // pic_init_qs_minus26
  w.Se(0);       // chroma_qp_index_offset
  w.Bit(1);      // deblocking_filter_control_present_flag
  w.Bit(0);      // constrained_intra_pred_flag
  w.Bit(0);      // redundant_pic_cnt_present_flag
  return Nal(3, 8, w.Finish());
}

uint8_t Clamp(int v) {
  return static_cast<uint8_t>(v < 16 ? 16 : v > 235 ? 235 : v);
}

// One IDR picture, every macroblock I_PCM. The picture is a diagonal
// gradient that slides with `frame`.
std::string IdrSlice(const Mp4Spec& spec, int frame) {
  BitWriter w;
  w.Ue(0);          // first_mb_in_slice
  w.Ue(7);          // slice_type: I, and all slices of the picture are I
  w.Ue(0);          // pic_parameter_set_id
  w.Bits(4, 0);     // frame_num (0 in an IDR)
  w.Ue(frame % 2);  // idr_pic_id: consecutive IDRs must differ
  w.Bit(0);         // no_output_of_prior_pics_flag
  w.Bit(0);         // long_term_reference_flag
  w.Se(0);          // slice_qp_delta
  w.Ue(1);          // disable_deblocking_filter_idc: off
  const int mbs_x = spec.width / 16;
  const int mbs_y = spec.height / 16;
  const int shift = frame * 8;
  for (int my = 0; my < mbs_y; ++my) {
    for (int mx = 0; mx < mbs_x; ++mx) {
      w.Ue(25);  // mb_type I_PCM
      w.AlignZero();
      for (int y = 0; y < 16; ++y) {
        for (int x = 0; x < 16; ++x) {
          int px = mx * 16 + x;
          int py = my * 16 + y;
          w.Byte(Clamp(16 + ((px + py + shift) * 2) % 220));
        }
      }
      for (int plane = 0; plane < 2; ++plane) {
        for (int y = 0; y < 8; ++y) {
          for (int x = 0; x < 8; ++x) {
            int cx = mx * 8 + x;
            int cy = my * 8 + y;
            int v = plane == 0 ? 128 + (cx * 4 - shift) % 90 - 45
                               : 128 + (cy * 4 + shift) % 90 - 45;
            w.Byte(Clamp(v));
          }
        }
      }
    }
  }
  return Nal(3, 5, w.Finish());
}

// ISO BMFF box writing (ISO/IEC 14496-12).
void U8(std::string& s, uint32_t v) { s.push_back(static_cast<char>(v)); }
void U16(std::string& s, uint32_t v) {
  U8(s, v >> 8);
  U8(s, v);
}
void U32(std::string& s, uint32_t v) {
  U16(s, v >> 16);
  U16(s, v & 0xffff);
}
void Zeros(std::string& s, int n) { s.append(n, '\0'); }

std::string Box(const char* type, const std::string& payload) {
  std::string b;
  U32(b, static_cast<uint32_t>(payload.size() + 8));
  b.append(type, 4);
  return b + payload;
}

std::string FullBox(const char* type, uint32_t flags,
                    const std::string& payload) {
  std::string p;
  U32(p, flags);  // version 0 in the top byte
  return Box(type, p + payload);
}

void Matrix(std::string& s) {
  const uint32_t m[9] = {0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000};
  for (uint32_t v : m) U32(s, v);
}

std::string AvcC(const std::string& sps, const std::string& pps) {
  std::string p;
  U8(p, 1);  // configurationVersion
  U8(p, kProfileBaseline);
  U8(p, kConstraintFlags);
  U8(p, kLevel);
  U8(p, 0xff);  // 4-byte NAL lengths
  U8(p, 0xe1);  // one SPS
  U16(p, sps.size());
  p += sps;
  U8(p, 1);  // one PPS
  U16(p, pps.size());
  p += pps;
  return Box("avcC", p);
}

std::string Stbl(const Mp4Spec& spec, const std::vector<uint32_t>& sizes,
                 uint32_t delta, uint32_t chunk_offset, const std::string& sps,
                 const std::string& pps) {
  std::string avc1;
  Zeros(avc1, 6);
  U16(avc1, 1);  // data_reference_index
  Zeros(avc1, 16);
  U16(avc1, spec.width);
  U16(avc1, spec.height);
  U32(avc1, 0x00480000);  // 72 dpi
  U32(avc1, 0x00480000);
  U32(avc1, 0);
  U16(avc1, 1);  // frame_count
  std::string name = "videogen-sim";
  U8(avc1, name.size());
  avc1 += name;
  Zeros(avc1, 31 - static_cast<int>(name.size()));
  U16(avc1, 0x18);    // depth
  U16(avc1, 0xffff);  // pre_defined = -1
  avc1 += AvcC(sps, pps);

  std::string stsd;
  U32(stsd, 1);
  stsd += Box("avc1", avc1);
  std::string stts;
  U32(stts, 1);
  U32(stts, sizes.size());
  U32(stts, delta);
  std::string stsc;
  U32(stsc, 1);
  U32(stsc, 1);
  U32(stsc, sizes.size());
  U32(stsc, 1);
  std::string stsz;
  U32(stsz, 0);
  U32(stsz, sizes.size());
  for (uint32_t s : sizes) U32(stsz, s);
  std::string stco;
  U32(stco, 1);
  U32(stco, chunk_offset);
  // No stss box: every sample is a sync sample (all IDR).
  return Box("stbl", FullBox("stsd", 0, stsd) + FullBox("stts", 0, stts) +
                         FullBox("stsc", 0, stsc) + FullBox("stsz", 0, stsz) +
                         FullBox("stco", 0, stco));
}

std::string Moov(const Mp4Spec& spec, const std::vector<uint32_t>& sizes,
                 uint32_t chunk_offset, const std::string& sps,
                 const std::string& pps) {
  const uint32_t timescale = 90000;
  const uint32_t delta = timescale / spec.fps;
  const uint32_t media_duration = delta * sizes.size();
  const uint32_t movie_duration = sizes.size() * 1000 / spec.fps;

  std::string mvhd;
  Zeros(mvhd, 8);  // creation, modification
  U32(mvhd, 1000);
  U32(mvhd, movie_duration);
  U32(mvhd, 0x10000);  // rate 1.0
  U16(mvhd, 0x100);    // volume 1.0
  Zeros(mvhd, 10);
  Matrix(mvhd);
  Zeros(mvhd, 24);
  U32(mvhd, 2);  // next_track_ID

  std::string tkhd;
  Zeros(tkhd, 8);
  U32(tkhd, 1);  // track_ID
  U32(tkhd, 0);
  U32(tkhd, movie_duration);
  Zeros(tkhd, 8);
  Zeros(tkhd, 8);  // layer, alternate_group, volume, reserved
  Matrix(tkhd);
  U32(tkhd, spec.width << 16);
  U32(tkhd, spec.height << 16);

  std::string mdhd;
  Zeros(mdhd, 8);
  U32(mdhd, timescale);
  U32(mdhd, media_duration);
  U16(mdhd, 0x55c4);  // "und"
  U16(mdhd, 0);

  std::string hdlr;
  U32(hdlr, 0);
  hdlr += "vide";
  Zeros(hdlr, 12);
  hdlr += std::string("VideoHandler", 13);  // with its NUL

  std::string vmhd;
  Zeros(vmhd, 8);
  std::string dref;
  U32(dref, 1);
  dref += FullBox("url ", 1, "");  // media is in this file

  std::string minf = Box(
      "minf", FullBox("vmhd", 1, vmhd) + Box("dinf", FullBox("dref", 0, dref)) +
                  Stbl(spec, sizes, delta, chunk_offset, sps, pps));
  std::string mdia =
      Box("mdia", FullBox("mdhd", 0, mdhd) + FullBox("hdlr", 0, hdlr) + minf);
  std::string trak = Box("trak", FullBox("tkhd", 3, tkhd) + mdia);
  return Box("moov", FullBox("mvhd", 0, mvhd) + trak);
}

}  // namespace

std::string MakeMp4(const Mp4Spec& spec) {
  const std::string sps = Sps(spec.width, spec.height);
  const std::string pps = Pps();
  std::string samples;
  std::vector<uint32_t> sizes;
  for (int i = 0; i < spec.frames; ++i) {
    std::string nal = IdrSlice(spec, i);
    std::string sample;
    U32(sample, nal.size());
    sample += nal;
    sizes.push_back(sample.size());
    samples += sample;
  }
  std::string ftyp;
  ftyp += "isom";
  U32(ftyp, 0x200);
  ftyp += "isomiso2avc1mp41";
  ftyp = Box("ftyp", ftyp);
  // moov comes first (fast start); its size does not depend on the offset.
  size_t moov_size = Moov(spec, sizes, 0, sps, pps).size();
  uint32_t offset = ftyp.size() + moov_size + 8;
  return ftyp + Moov(spec, sizes, offset, sps, pps) + Box("mdat", samples);
}

const std::string& SampleMp4() {
  static const std::string* mp4 = new std::string(MakeMp4(Mp4Spec{}));
  return *mp4;
}

}  // namespace videogen::sim
