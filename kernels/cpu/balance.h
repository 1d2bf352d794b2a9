// CPU reference of the balancing losses and the aux-loss-free bias update (the CUDA kernels in
// kernels/cuda/balance*.cu compute the same functions; routing/balance_*.cpp calls these on the host).
#pragma once

#include <cstdint>

namespace moe::cpu {

// Every function computes in double whatever T is (f32 or f64). A term's value is written to
// value[0]; its gradients are added (+=) into the gradient arrays, which have the input's shape.
// Ids are i32 with -1 = no expert; an id outside [-1, E) is an error naming the slot.

// counts[e] += the slots of ids[num_ids] that went to expert e.
void count_experts(const int32_t* ids, int64_t num_ids, int64_t num_experts, int64_t* counts);

// CV(v)^2 = var(v) / mean(v)^2 over v[n] (population variance); grad[i] = d CV^2 / d v_i
// (written). A zero mean (nothing routed) gives 0 and a zero gradient.
double cv_squared(const double* v, int64_t n, double* grad);

// Switch: alpha * E * sum_i f_i P_i with f_i = counts_i / (slots T), P_i = score_sums_i / T,
// T = max(tokens, 1); returns the value, grad_row[E] = alpha E f_i / T (written: d value /
// d scores[t,i], the same for every token t).
template <typename T>
double switch_balance_from_counts(const T* score_sums, const int64_t* counts, int64_t tokens, int64_t slots,
                                  int64_t num_experts, double alpha, T* grad_row);

// DeepSeekMoE device-level: alpha * sum_g f'_g P'_g over `groups` contiguous groups of E/groups
// experts, f'_g = mean over g of E/(slots T) counts_i, P'_g = sum over g of score_sums_i / T,
// T = max(tokens, 1); returns the value, grad_row[E] = alpha f'_{g(i)} / T (written, the same for
// every token). groups must divide E.
template <typename T>
double device_balance_from_counts(const T* score_sums, const int64_t* counts, int64_t tokens, int64_t slots,
                                  int64_t num_experts, int64_t groups, double alpha, T* grad_row);

// Shazeer et al.'s importance: coef * CV(I)^2, I_i = sum of weights[n] over the slots with
// ids[n] = i (n < num_slots); dweights[n] += coef * dCV^2/dI_{ids[n]} (slots without an expert: 0).
template <typename T>
void importance_balance(const T* weights, const int32_t* ids, int64_t num_slots, int64_t num_experts, double coef,
                        double* value, T* dweights);

// ST-MoE z-loss: coef/T * sum_t logsumexp(logits[t,:])^2 over logits[T,E] (0 for T = 0);
// dlogits[t,j] += coef * 2 lse_t softmax_tj / T.
template <typename T>
void z_balance(const T* logits, int64_t tokens, int64_t num_experts, double coef, double* value, T* dlogits);

// DeepSeek-V3 sequence-level: per sequence of seq_len tokens f_i = E/(k S) * its slots with id
// i, P_i = mean over its tokens of s'_ti (scores normalised per token); coef * sum_i f_i P_i,
// averaged over the T/S sequences (0 for T = 0); dscores[T,E] += its gradient. seq_len must
// divide T; a token whose scores sum to <= 0 is an error.
template <typename T>
void seq_balance(const T* scores, const int32_t* ids, int64_t tokens, int64_t num_experts, int64_t slots,
                 int64_t seq_len, double coef, double* value, T* dscores);

// Shazeer et al.'s load with the smooth estimator of noisy top-k gating: h = clean + normal *
// softplus(raw_noise) ([T,E] each); P(t,i) = Phi((clean_ti - thr_ti) / softplus(raw_ti)) with
// thr_ti the k-th largest h of token t over the experts other than i (ties: lower index first);
// Load_i = sum_t P(t,i); value coef * CV(Load)^2; dclean, draw_noise [T,E] += its gradients
// (thr_ti is some h_tj, so expert j's inputs get gradient too). Needs k < E.
template <typename T>
void load_balance(const T* clean, const T* raw_noise, const T* normal, int64_t tokens, int64_t num_experts, int64_t k,
                  double coef, double* value, T* dclean, T* draw_noise);

// Aux-loss-free balancing (DeepSeek-V3): bias[i] -= gamma * sign(loads_i - mean load), the sign
// taken exactly in integers (E loads_i - sum loads). A NaN *skip (the step's clip scale of a
// skipped update) leaves the bias alone; skip may be null.
template <typename T>
void update_expert_bias(T* bias, const int64_t* loads, int64_t num_experts, double gamma, const float* skip);

}  // namespace moe::cpu
