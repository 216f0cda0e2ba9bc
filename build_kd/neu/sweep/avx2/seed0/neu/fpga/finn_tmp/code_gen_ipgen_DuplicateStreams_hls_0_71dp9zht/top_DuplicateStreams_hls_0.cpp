
#define HLS_CONSTEXPR_ENABLE
#define AP_INT_MAX_W 12

#include "bnn-library.h"

#include "dup.hpp"



void DuplicateStreams_hls_0(hls::stream<hls::vector<ap_uint<4>, 3>> &in0_V, hls::stream<hls::vector<ap_uint<4>, 3>> &out0_V, hls::stream<hls::vector<ap_uint<4>, 3>> &out1_V)
{
#pragma HLS dataflow disable_start_propagation
#pragma HLS INTERFACE axis port=in0_V
#pragma HLS INTERFACE axis port=out0_V
#pragma HLS INTERFACE axis port=out1_V
#pragma HLS INTERFACE ap_ctrl_none port=return
#pragma HLS aggregate variable=in0_V compact=bit
#pragma HLS aggregate variable=out0_V compact=bit
#pragma HLS aggregate variable=out1_V compact=bit
StreamingDup(in0_V, out0_V, out1_V);
}
