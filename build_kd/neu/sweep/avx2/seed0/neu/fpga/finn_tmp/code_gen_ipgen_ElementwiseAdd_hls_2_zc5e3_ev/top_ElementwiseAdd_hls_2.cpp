
#define HLS_CONSTEXPR_ENABLE
#define AP_INT_MAX_W 5

#include "bnn-library.h"

#include "flatten.hpp"

using LhsType = ap_int<4>;
using RhsType = ap_int<4>;
using OutType = ap_int<5>;
static constexpr auto LhsWidth = 4;
static constexpr auto RhsWidth = 4;
static constexpr auto OutWidth = 5;
using LhsPacked = ap_uint<4>;
using RhsPacked = ap_uint<4>;
using OutPacked = ap_uint<5>;
#include "params.hpp"
using LhsStream = hls::stream<LhsPacked>;
using RhsStream = hls::stream<RhsPacked>;
using OutStream = hls::stream<OutPacked>;

void ElementwiseAdd_hls_2 (
  LhsStream &in0_V,
  RhsStream &in1_V,
  OutStream &out0_V
)
{
#pragma HLS INTERFACE axis port=out0_V
#pragma HLS INTERFACE axis port=in0_V
#pragma HLS INTERFACE axis port=in1_V
#pragma HLS INTERFACE ap_ctrl_none port=return

LhsType lhs[1][1][1][1][1];
#pragma HLS ARRAY_PARTITION variable=lhs complete dim=5
#pragma HLS BIND_STORAGE variable=lhs type=RAM_S2P impl=AUTO


RhsType rhs[1][1][1][1][1];
#pragma HLS ARRAY_PARTITION variable=rhs complete dim=5
#pragma HLS BIND_STORAGE variable=rhs type=RAM_S2P impl=AUTO


OutType out[1];
#pragma HLS ARRAY_PARTITION variable=out complete dim=1
#pragma HLS BIND_STORAGE variable=out type=RAM_S2P impl=LUTRAM

for(std::size_t i0 = 0; i0<1; ++i0) {
for(std::size_t i1 = 0; i1<16; ++i1) {
for(std::size_t i2 = 0; i2<16; ++i2) {
for(std::size_t i3 = 0; i3<96; ++i3) {

#pragma HLS pipeline II=1 style=flp


if(true) {
    const auto buffer = Slice<LhsType>{}(
        in0_V.read()
    );
    for(std::size_t pe = 0; pe < 1; ++pe) {
    #pragma HLS unroll
        lhs[0][0][0][0][pe] = buffer(pe, 0);
    }
}


if(true) {
    const auto buffer = Slice<RhsType>{}(
        in1_V.read()
    );
    for(std::size_t pe = 0; pe < 1; ++pe) {
    #pragma HLS unroll
        rhs[0][0][0][0][pe] = buffer(pe, 0);
    }
}


for(std::size_t pe = 0; pe < 1; ++pe) {
#pragma HLS unroll
#pragma HLS INLINE recursive
    out[pe] = (lhs[0][0][0][0][pe] + rhs[0][0][0][0][pe]);
}


out0_V.write(flatten(out));

}
}
}
}
}
