// Read-only file mappings (mmap) with the checks a reader of untrusted paths needs: regular file
// first, then open, stat and map, each failure one line naming the file.
#include "src/util/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "src/util/check.h"

namespace moe {

namespace {

constexpr uint64_t k_copy_chunk_bytes = uint64_t{4} << 20;  // copied while the next one is read
// MADV_WILLNEED reads at most the device's read-ahead window per call (128 KiB by default, 8 MiB
// here): one call per 128 KiB is read in full everywhere.
constexpr uint64_t k_request_bytes = uint64_t{128} << 10;

// The whole pages inside [begin, end) of a mapping at `base`, as (start, length); length 0 if none.
std::pair<unsigned char*, size_t> whole_pages(unsigned char* base, uint64_t begin, uint64_t end) {
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t first = (begin + page - 1) / page * page, last = end / page * page;
  if (base == nullptr || last <= first) return {nullptr, 0};
  return {base + first, static_cast<size_t>(last - first)};
}

}  // namespace

MappedFile::MappedFile(const std::filesystem::path& path, const std::string& what) {
  const std::string where = path.string();
  require_regular_file(where, "cannot open " + what);  // before opening: a FIFO would block
  const int fd = ::open(where.c_str(), O_RDONLY | O_CLOEXEC);
  MOE_CHECK(fd >= 0, "cannot open ", what, " ", where, ": ", std::strerror(errno));
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    const int error = errno;
    ::close(fd);
    MOE_FAIL("cannot stat ", what, " ", where, ": ", std::strerror(error));
  }
  size_ = static_cast<uint64_t>(info.st_size);
  if (size_ > 0) {  // mmap refuses a length of 0
    void* mapped = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    const int error = errno;
    ::close(fd);  // the mapping keeps the file open
    MOE_CHECK(mapped != MAP_FAILED, "cannot map ", what, " ", where, ": ", std::strerror(error));
    data_ = static_cast<unsigned char*>(mapped);
    advise_random();
  } else {
    ::close(fd);
  }
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

// The hints below may fail (an old kernel): harmless, the reads are then only less exact.
void MappedFile::advise_sequential() const {
  if (data_ != nullptr) ::madvise(data_, size_, MADV_SEQUENTIAL);
}

void MappedFile::advise_random() const {
  if (data_ != nullptr) ::madvise(data_, size_, MADV_RANDOM);
}

void MappedFile::copy_out(uint64_t begin, uint64_t end, void* out) const {
  MOE_CHECK(begin <= end && end <= size_, "MappedFile: bytes [", begin, ", ", end, ") of a ", size_, "-byte file");
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  auto request = [&](uint64_t from, uint64_t to) {  // the pages holding [from, to), a piece per call
    for (uint64_t at = from / page * page; at < to; at += k_request_bytes) {
      ::madvise(data_ + at, static_cast<size_t>(std::min(to - at, k_request_bytes)), MADV_WILLNEED);
    }
  };
  auto* target = static_cast<unsigned char*>(out);
  request(begin, std::min(end, begin + k_copy_chunk_bytes));
  for (uint64_t at = begin; at < end; at += k_copy_chunk_bytes) {
    const uint64_t chunk_end = std::min(end, at + k_copy_chunk_bytes);
    request(chunk_end, std::min(end, chunk_end + k_copy_chunk_bytes));
    std::memcpy(target + (at - begin), data_ + at, static_cast<size_t>(chunk_end - at));
    release(at, chunk_end);  // the copy is what the caller keeps
  }
}

void MappedFile::release(uint64_t begin, uint64_t end) const {
  auto [start, length] = whole_pages(data_, begin, end);
  if (length > 0) ::madvise(start, length, MADV_DONTNEED);  // read-only private pages: refetched if touched
}

}  // namespace moe
