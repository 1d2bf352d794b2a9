// A file mapped read-only into memory: the kernel reads a page from disk only when it is first
// touched, so a reader that needs a few byte ranges of a large file reads only their pages.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace moe {

// The mapping lives as long as the object (share it through a shared_ptr). Files are expected
// not to change while mapped: checkpoints are committed by rename and never edited in place (a
// file truncated by another process under a live mapping would fault on access, SIGBUS).
class MappedFile {
 public:
  // Refuses a path that is not a regular file before opening it (a FIFO would block); errors
  // read "<path>: cannot open <what> (...)", "cannot open <what> <path>", "cannot stat <what>
  // <path>: ..." or "cannot map <what> <path>: ...".
  MappedFile(const std::filesystem::path& path, const std::string& what);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const unsigned char* data() const { return data_; }  // nullptr for an empty file
  uint64_t size() const { return size_; }
  // How the pages will be touched: sequential (aggressive read-ahead) for one pass over the
  // whole file; random (no read-ahead on faults: a fault reads just its page) for byte ranges
  // copied by copy_out(). Mappings start random: with the default read-around a fault reads up
  // to read_ahead_kb (8 MiB on this machine) around it, so slices would drag in their neighbours.
  void advise_sequential() const;
  void advise_random() const;
  // Copies bytes [begin, end) of the file to `out`, reading exactly those pages: chunk by chunk,
  // the next chunk's read requested (MADV_WILLNEED) before the current one is copied, and each
  // chunk released after. (One WILLNEED of the whole range would not do: the kernel caps each
  // call at the read-ahead window, and the rest would fault in page by page, 20 times slower.)
  void copy_out(uint64_t begin, uint64_t end, void* out) const;
  // Drops this process's mapping of the whole pages inside [begin, end) after they were read:
  // the data stays in the page cache, but no longer counts in this process's resident set, so
  // a pass over a file larger than memory does not crowd out the rest.
  void release(uint64_t begin, uint64_t end) const;

 private:
  unsigned char* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace moe
