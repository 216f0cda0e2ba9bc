
#define HLS_CONSTEXPR_ENABLE
#define AP_INT_MAX_W 1296

#include "bnn-library.h"

#include "weights.hpp"
#include "activations.hpp"
#include "mvau.hpp"
#include "thresh.h"

#define MW1 432
 #define MH1 96

            #define SIMD1 108
 #define PE1 3
 #define WMEM1 128

            #define TMEM1 32
 #define numReps 256
#define WP1 4


void MVAU_hls_7(
                    hls::stream<ap_uint<432>> &in0_V,
                    hls::stream<ap_uint<1296>> &in1_V,
                    hls::stream<ap_uint<12>> &out0_V
                    )
{
#pragma HLS INTERFACE axis port=in0_V
#pragma HLS INTERFACE axis port=out0_V
#pragma HLS INTERFACE ap_ctrl_none port=return
#pragma HLS INTERFACE axis port=in1_V
#pragma HLS ARRAY_PARTITION variable=threshs.m_thresholds complete dim=1
#pragma HLS ARRAY_PARTITION variable=threshs.m_thresholds complete dim=3
Matrix_Vector_Activate_Stream_Batch<MW1, MH1, SIMD1, PE1, Slice<ap_uint<4>>, Slice<ap_uint<4>>, Identity, ap_int<4> >
                (in0_V, out0_V, in1_V, threshs, numReps, ap_resource_lut());
}
